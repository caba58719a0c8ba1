"""Error and time of favor_attention against exact softmax attention.

For each sequence length L, runs exact ``softmax_attention`` and ``favor_attention``
on the same queries, keys and values (synthetic Gaussian inputs, or the first L rows
of Q/K/V loaded from .npy files), and prints one table row: both times (median of
--repeats runs), the speed-up, and the error of FAVOR against exact attention
(largest absolute error, relative Frobenius error, mean per-row relative error).
"""

from __future__ import annotations

import time

import numpy as np

from ._progress import progress


def add_arguments(parser):
    """Options of ``favorkern attention``."""
    data = parser.add_argument_group("inputs")
    data.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="sequence lengths to test (default: 256 1024 4096 for synthetic inputs, "
        "the full length of the files otherwise); with files, each L uses the first L rows",
    )
    data.add_argument("--d", type=int, default=64, help="query/key dimension (synthetic)")
    data.add_argument("--dv", type=int, default=None, help="value dimension (synthetic; default d)")
    data.add_argument(
        "--sigma",
        type=float,
        default=0.5,
        help="standard deviation of the synthetic query/key entries (larger = sharper "
        "attention, harder for random features)",
    )
    data.add_argument("--queries", "-Q", default=None, help=".npy file of queries (..., L, d)")
    data.add_argument("--keys", "-K", default=None, help=".npy file of keys (..., L, d)")
    data.add_argument("--values", "-V", default=None, help=".npy file of values (..., L, dv)")
    data.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="floating-point type of the computation (files are converted)",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the inputs and projection")

    model = parser.add_argument_group("attention")
    model.add_argument("--n-features", type=int, default=256, help="number of random projections m")
    model.add_argument(
        "--features",
        choices=("positive", "hyperbolic", "trigonometric", "relu"),
        default="positive",
        help="feature map (see favorkern.favor_attention)",
    )
    model.add_argument(
        "--projection",
        choices=("orthogonal", "gaussian"),
        default="orthogonal",
        help="kind of random projection",
    )
    model.add_argument("--causal", action="store_true", help="causal (autoregressive) attention")
    model.add_argument("--scale", type=float, default=None, help="logit scale (default 1/sqrt(d))")

    run = parser.add_argument_group("run")
    run.add_argument(
        "--repeats", type=int, default=3, help="timed runs per length (the median is shown)"
    )
    run.add_argument(
        "--no-progress", action="store_true", help="do not show the progress bar on stderr"
    )


def _load(path, name):
    array = np.load(path, allow_pickle=False)
    if array.ndim < 2:
        raise ValueError(f"{name} file {path} must hold an array (..., L, d), got {array.shape}")
    return array


def _inputs(args):
    dtype = np.dtype(args.dtype)
    files = [args.queries, args.keys, args.values]
    if any(files):
        if not all(files):
            raise ValueError("--queries, --keys and --values must be given together")
        Q, K, V = (
            _load(path, name).astype(dtype, copy=False)
            for path, name in zip(files, ("--queries", "--keys", "--values"), strict=True)
        )
        full = min(Q.shape[-2], K.shape[-2])
        lengths = args.lengths or [full]
        too_long = [L for L in lengths if L > full]
        if too_long:
            raise ValueError(f"--lengths {too_long} exceed the {full} rows of the files")
        return lambda L: (Q[..., :L, :], K[..., :L, :], V[..., :L, :]), lengths
    if args.d < 1:
        raise ValueError(f"--d must be >= 1, got {args.d}")
    dv = args.d if args.dv is None else args.dv
    if dv < 1:
        raise ValueError(f"--dv must be >= 1, got {dv}")
    if not args.sigma > 0:
        raise ValueError(f"--sigma must be > 0, got {args.sigma}")
    lengths = args.lengths or [256, 1024, 4096]
    rng = np.random.default_rng(args.seed)
    longest = max(lengths)
    Q = (rng.standard_normal((longest, args.d)) * args.sigma).astype(dtype)
    K = (rng.standard_normal((longest, args.d)) * args.sigma).astype(dtype)
    V = rng.standard_normal((longest, dv)).astype(dtype)
    return lambda L: (Q[:L], K[:L], V[:L]), lengths


def _median_time(fn, repeats):
    result = fn()  # warm-up: thread pool, BLAS controller, first-touch of buffers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def run(args) -> int:
    """Print the error/time table; returns the exit status."""
    from .. import FavorAttention, softmax_attention

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if any(L < 1 for L in args.lengths or []):
        raise ValueError(f"--lengths must be >= 1, got {args.lengths}")
    if args.n_features < 1:
        raise ValueError(f"--n-features must be >= 1, got {args.n_features}")
    take, lengths = _inputs(args)
    layer = FavorAttention(
        n_components=args.n_features,
        feature_map=args.features,
        projection=args.projection,
        causal=args.causal,
        random_state=args.seed,
    )
    header = (
        f"{'L':>9} {'exact ms':>10} {'favor ms':>10} {'speed-up':>9} "
        f"{'max abs err':>12} {'rel err':>10} {'row err':>10}"
    )
    rows = []
    for L in progress(lengths, desc="attention", disable=args.no_progress):
        Q, K, V = take(L)
        t_exact, exact = _median_time(
            lambda Q=Q, K=K, V=V: softmax_attention(Q, K, V, causal=args.causal, gamma=args.scale),
            args.repeats,
        )
        t_favor, approx = _median_time(
            lambda Q=Q, K=K, V=V: layer(Q, K, V, gamma=args.scale), args.repeats
        )
        diff = approx.astype(np.float64) - exact
        ref_norm = np.linalg.norm(exact)
        rel = np.linalg.norm(diff) / ref_norm if ref_norm > 0 else np.inf
        row_ref = np.linalg.norm(exact, axis=-1)
        row_err = np.linalg.norm(diff, axis=-1) / np.where(row_ref > 0, row_ref, np.inf)
        rows.append(
            f"{L:>9d} {t_exact * 1e3:10.2f} {t_favor * 1e3:10.2f} {t_exact / t_favor:9.2f} "
            f"{np.abs(diff).max():12.4g} {rel:10.4g} {row_err.mean():10.4g}"
        )
    mode = "causal" if args.causal else "bidirectional"
    print(
        f"favor_attention ({args.features}, m = {args.n_features}, {args.projection}, {mode}, "
        f"{args.dtype}) against exact softmax attention"
    )
    print(header)
    print("\n".join(rows))
    return 0

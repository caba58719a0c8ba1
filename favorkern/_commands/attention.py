"""Error and time of favor_attention against exact softmax attention.

For each sequence length L, runs exact ``softmax_attention`` and ``favor_attention``
on the same queries, keys and values (synthetic Gaussian inputs, or arrays loaded
from .npy files), and prints one table row: both times (median of --repeats runs),
the speed-up, and the error of FAVOR against exact attention (largest absolute
error, relative Frobenius error, mean per-row relative error).

With files, L counts query rows: each L uses the first L queries and, when the
files hold as many keys as queries (self-attention), the first L keys and values;
otherwise (cross-attention, bidirectional only) every key and value, always.
Without --lengths the whole files are used.
"""

from __future__ import annotations

import time

import numpy as np

from ..feature_maps import feature_map_names
from ..projections import PROJECTION_KINDS
from ._args import int_at_least, positive_float, seed
from ._files import UsageError, load_array
from ._progress import progress


def add_arguments(parser):
    """Options of ``favorkern attention``."""
    data = parser.add_argument_group("inputs")
    data.add_argument(
        "--lengths",
        type=int_at_least(1),
        nargs="+",
        default=None,
        metavar="L",
        help="sequence lengths to test (default: 256 1024 4096 for synthetic inputs, "
        "the whole files otherwise); with files, L counts query rows (see above)",
    )
    data.add_argument(
        "--d", type=int_at_least(1), default=64, help="query/key dimension (synthetic)"
    )
    data.add_argument(
        "--dv", type=int_at_least(1), default=None, help="value dimension (synthetic; default d)"
    )
    data.add_argument(
        "--sigma",
        type=positive_float,
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
    data.add_argument("--seed", type=seed, default=0, help="seed of the inputs and projection")

    model = parser.add_argument_group("attention")
    model.add_argument(
        "--n-components",
        type=int,
        default=256,
        help="output width of the feature map (paired maps: two outputs per projection)",
    )
    model.add_argument(
        "--feature-map",
        choices=feature_map_names(),
        default="positive",
        help="feature map of the registry (see favorkern.favor_attention); maps with "
        "fitted constants (optimal, saderf) are bidirectional only",
    )
    model.add_argument(
        "--projection",
        choices=PROJECTION_KINDS,
        default="orthogonal",
        help="kind of random projection",
    )
    model.add_argument("--causal", action="store_true", help="causal (autoregressive) attention")
    model.add_argument(
        "--gamma", type=positive_float, default=None, help="logit scale (default 1/sqrt(d))"
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=3,
        help="timed runs per length (the median is shown)",
    )
    run.add_argument(
        "--no-progress", action="store_true", help="do not show the progress bar on stderr"
    )


FILE_OPTIONS = ("--queries", "--keys", "--values")


def _check_files(Q, K, V, causal):
    """Shapes of loaded Q, K, V that favor_attention accepts, else a UsageError naming options."""
    for array, option in zip((Q, K, V), FILE_OPTIONS, strict=True):
        if array.ndim < 2:
            raise UsageError(f"{option} must hold an array (..., L, d), got shape {array.shape}")
        if 0 in array.shape:
            raise UsageError(f"{option} is empty (shape {array.shape})")
    if K.shape[-1] != Q.shape[-1]:
        raise UsageError(
            f"--keys must have the query dimension d = {Q.shape[-1]} of --queries, got shape "
            f"{K.shape}"
        )
    if V.shape[-2] != K.shape[-2]:
        raise UsageError(
            f"--values must have one row per key ({K.shape[-2]} rows in --keys), got shape "
            f"{V.shape}"
        )
    if causal and Q.shape[-2] != K.shape[-2]:
        raise UsageError(
            f"--causal needs as many query rows as key rows, got {Q.shape[-2]} in --queries "
            f"and {K.shape[-2]} in --keys"
        )
    try:
        np.broadcast_shapes(Q.shape[:-2], K.shape[:-2], V.shape[:-2])
    except ValueError:
        raise UsageError(
            "the leading (batch, head) dimensions of --queries, --keys and --values do not "
            f"broadcast: {Q.shape}, {K.shape}, {V.shape}"
        ) from None


def _inputs(args):
    dtype = np.dtype(args.dtype)
    files = [args.queries, args.keys, args.values]
    if any(files):
        if not all(files):
            raise UsageError("--queries, --keys and --values must be given together")
        Q, K, V = (
            load_array(path, option) for path, option in zip(files, FILE_OPTIONS, strict=True)
        )
        _check_files(Q, K, V, args.causal)
        with np.errstate(over="ignore"):  # checked just below, naming the option
            Q, K, V = (X.astype(dtype, copy=False) for X in (Q, K, V))
        for array, option in zip((Q, K, V), FILE_OPTIONS, strict=True):
            if not np.isfinite(array).all():
                raise UsageError(
                    f"{option} has values beyond the {args.dtype} range; use --dtype float64"
                )
        n_queries, n_keys = Q.shape[-2], K.shape[-2]
        lengths = args.lengths or [n_queries]
        too_long = [L for L in lengths if L > n_queries]
        if too_long:
            raise UsageError(f"--lengths {too_long} exceed the {n_queries} rows of --queries")
        if n_keys == n_queries:  # self-attention: L is the sequence length

            def take(L):
                return Q[..., :L, :], K[..., :L, :], V[..., :L, :]

            keys_note = "the first L keys"
        else:  # cross-attention: every query attends to every key

            def take(L):
                return Q[..., :L, :], K, V

            keys_note = f"all {n_keys} keys"
        return take, lengths, keys_note
    dv = args.d if args.dv is None else args.dv
    lengths = args.lengths or [256, 1024, 4096]
    rng = np.random.default_rng(args.seed)
    longest = max(lengths)
    # standard normal draws stay below 10 in magnitude for any length used here
    if args.sigma * 10.0 > float(np.finfo(dtype).max):
        raise UsageError(
            f"--sigma {args.sigma:g} makes inputs beyond the {np.dtype(dtype).name} range; "
            "use a smaller --sigma or --dtype float64"
        )
    Q = (rng.standard_normal((longest, args.d)) * args.sigma).astype(dtype)
    K = (rng.standard_normal((longest, args.d)) * args.sigma).astype(dtype)
    V = rng.standard_normal((longest, dv)).astype(dtype)
    return (lambda L: (Q[:L], K[:L], V[:L])), lengths, "synthetic, L keys"


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
    from ..diagnostics import row_errors

    if args.n_components < 1:
        raise UsageError(f"--n-components must be >= 1, got {args.n_components}")
    if args.causal and args.feature_map in feature_map_names(data_free=False):
        raise UsageError(
            f"--feature-map {args.feature_map} fits its constants on all tokens: "
            "use it without --causal"
        )
    take, lengths, keys_note = _inputs(args)
    layer = FavorAttention(
        n_components=args.n_components,
        feature_map=args.feature_map,
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
            lambda Q=Q, K=K, V=V: softmax_attention(Q, K, V, causal=args.causal, gamma=args.gamma),
            args.repeats,
        )
        t_favor, approx = _median_time(
            lambda Q=Q, K=K, V=V: layer(Q, K, V, gamma=args.gamma), args.repeats
        )
        diff = approx.astype(np.float64) - exact
        ref_norm = np.linalg.norm(exact)
        rel = np.linalg.norm(diff) / ref_norm if ref_norm > 0 else np.inf
        row_err = row_errors(approx, exact)
        rows.append(
            f"{L:>9d} {t_exact * 1e3:10.2f} {t_favor * 1e3:10.2f} {t_exact / t_favor:9.2f} "
            f"{np.abs(diff).max():12.4g} {rel:10.4g} {row_err.mean():10.4g}"
        )
    mode = "causal" if args.causal else "bidirectional"
    print(
        f"favor_attention ({args.feature_map}, width {args.n_components}, {args.projection}, "
        f"{mode}, "
        f"{args.dtype}) against exact softmax attention; keys: {keys_note}"
    )
    print(header)
    print("\n".join(rows))
    return 0

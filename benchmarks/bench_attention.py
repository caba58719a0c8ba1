"""Benchmark favor_attention against its matrix-product floor, exact attention and peers.

A script, not a test.  Float32; medians of ``--repeats`` runs, the contestants of a
row timed round-robin (one run of each in turn), so that the ratios of a row share
the machine's load.  Three tables:

1. ``L`` sweep, d = 64, m = 256, one head, L = 2^min-exp ... 2^max-exp:

   * ``floor``: the four bare matrix products of bidirectional FAVOR at the same
     shapes (Q W^T, K W^T, phi(K)^T V, phi(Q) S): the better of BLAS on all threads
     and row ranges over favorkern's thread pool;
   * ``bidir`` / ``causal``: ``favor_attention`` (``--methods``: both causal
     algorithms);
   * ``exact``: ``softmax_attention`` (up to 2^exact-max-exp);
   * ``performer``: performer-pytorch's ``FastAttention`` (bidirectional) on the same
     inputs and the same projection, torch on all cores (when installed; up to
     2^peer-max-exp);
   * ``fast-transformers``: the forward pass of fast-transformers'
     ``CausalLinearAttention`` with a FAVOR feature map, on the same inputs and the
     same projection (when installed; up to 2^peer-max-exp): positive features of
     the queries and keys computed as its ``Favor`` map does (``x sqrt(gamma)``,
     ``|x|^2``, ``x W^T``, ``exp(u - |x|^2/2 - log(m)/2)``; the ``exp(+u)`` half
     only, so that the map is favorkern's positive one with m = 256 features),
     the normalizer ``1 / (phi(q_i) . cumsum phi(k) + eps)``, its compiled CPU
     kernel ``causal_dot_product`` and the final scaling; tensors already in its
     (N, H, L, D) kernel layout (no permutes), torch on all cores.  Its sdist
     (0.4.0) needs ``CUDA_HOME`` to build; for measurement, its CPU extension
     ``fast_transformers/causal_product/causal_product_cpu.cpp`` alone builds with
     ``torch.utils.cpp_extension.CppExtension`` (``-fopenmp -ffast-math -O3``) into
     a private directory on ``PYTHONPATH``, with the package's
     ``causal_product/__init__.py`` beside it;
   * ``base`` and ``base causal``: with ``--baseline DIR``, the bidirectional and
     causal ``favor_attention`` of another checkout (``DIR/favorkern``, imported
     under another name) on the same inputs, round-robin with the others:
     before/after figures in one run;
   * ratios and time per token.

2. Many heads: (1, 12) heads of d = 32 at L = 512 ... 4096 against one head of d = 64
   at L = 2^16, as time per FLOP (bidirectional FAVOR costs 4 m (d + dv) FLOPs per
   token and head).

3. Crossover: ``favor_attention`` against ``softmax_attention`` at small L, and the
   choice of ``method="auto"`` (exact where ``Lq Lk <= EXACT_ATTENTION_CROSSOVER m (Lq + Lk)``).

``--memory`` instead measures the peak RSS of favor_attention at L = 2^16 and
2^max-exp in child processes (bidirectional and causal), against the inputs and
an output-sized array.

Usage::

    python benchmarks/bench_attention.py                    # all tables, 2^10 .. 2^20
    python benchmarks/bench_attention.py --max-exp 16 --repeats 5 --methods
    python benchmarks/bench_attention.py --memory --max-exp 20
    python benchmarks/bench_attention.py --tables sweep --max-exp 14 --baseline ../base
    python benchmarks/bench_attention.py --tables sweep,heads --max-exp 14 --cpu  # 1 thread

Run it from the repository root with ``PYTHONPATH=.`` to time this checkout.  Every
table is followed by the machine's SIMD level (numpy's CPU features), OpenBLAS's
core and the elementwise kernels favorkern chose (``FAVORKERN_EXP`` forces one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
from timing import load_checkout, print_machine
from timing import round_robin as timed_round_robin

#: Set by ``--cpu``: time CPU seconds of the process instead of wall seconds.
CPU_TIME = False


def round_robin(fns, repeats):
    """:func:`timing.round_robin`, with ``--cpu`` in CPU seconds (``time.process_time``,
    every thread of the process)."""
    return timed_round_robin(fns, repeats, cpu=CPU_TIME)


D, M = 64, 256


def inputs(length, seed=0, d=D, batch=()):
    rng = np.random.default_rng(seed)
    shape = tuple(batch) + (length, d)
    Q, K, V = (rng.standard_normal(shape, dtype=np.float32) * 0.5 for _ in range(3))
    return Q, K, V


def performer(Q, K, V, W):
    """performer-pytorch's bidirectional FastAttention with projection ``W``, or None."""
    try:
        import torch
        from performer_pytorch import FastAttention
    except ImportError:
        return None
    attention = FastAttention(dim_heads=Q.shape[-1], nb_features=W.shape[0], causal=False)
    attention.projection_matrix.copy_(torch.from_numpy(W.astype(np.float32)))
    q, k, v = (torch.from_numpy(X.reshape((-1, 1) + X.shape[-2:])) for X in (Q, K, V))

    def run():
        with torch.no_grad():
            attention(q, k, v)

    return run


def fast_transformers_causal(Q, K, V, W):
    """fast-transformers' causal linear attention with positive features, or None.

    The steps of ``CausalLinearAttention.forward`` with a ``Favor`` feature map (see
    the module docstring); ``causal_dot_product`` is its compiled CPU kernel.
    """
    try:
        import torch
        from fast_transformers.causal_product import causal_dot_product
    except ImportError:
        return None
    d, m = Q.shape[-1], W.shape[0]
    omega = torch.from_numpy(np.ascontiguousarray(W.T, dtype=np.float32))
    scale = float(d) ** -0.25  # sqrt(softmax_temp), softmax_temp = 1 / sqrt(d)
    log_m = 0.5 * float(np.log(m))
    q, k, v = (torch.from_numpy(X.reshape((1, 1) + X.shape[-2:])) for X in (Q, K, V))

    def features(x):
        x = x * scale
        offset = torch.einsum("...d,...d->...", x, x).unsqueeze(-1) * 0.5 + log_m
        return torch.exp(x.matmul(omega) - offset)

    def run():
        with torch.no_grad():
            fq, fk = features(q), features(k)
            z = 1 / (torch.einsum("nhli,nhli->nhl", fq, fk.cumsum(2)) + 1e-6)
            out = causal_dot_product(fq, fk, v)
            return out * z[..., None]

    return run


def floor_products(Q, K, V, W, split=False):
    """The four products of bidirectional FAVOR, with preallocated outputs.

    ``split``: row ranges over the thread pool of favorkern with BLAS pinned to one
    thread (the parallel layout favor_attention uses); else one BLAS-threaded call each.
    """
    from favorkern._parallel import blas_single_thread, executor, n_threads

    Wt = np.ascontiguousarray(W.astype(np.float32).T)
    features = np.empty((Q.shape[0], M), dtype=np.float32)
    out = np.empty_like(V)
    workers = n_threads() if split else 1
    bounds = [(Q.shape[0] * w // workers, Q.shape[0] * (w + 1) // workers) for w in range(workers)]
    states = [np.empty((M, V.shape[1]), dtype=np.float32) for _ in range(workers)]

    def keys(w):
        a, b = bounds[w]
        np.matmul(K[a:b], Wt, out=features[a:b])
        np.matmul(features[a:b].T, V[a:b], out=states[w])

    def queries(w):
        a, b = bounds[w]
        np.matmul(Q[a:b], Wt, out=features[a:b])
        np.matmul(features[a:b], states[0], out=out[a:b])

    def run():
        if workers == 1:
            keys(0)
            queries(0)
            return
        with blas_single_thread():
            pool = executor(workers)
            for future in [pool.submit(keys, w) for w in range(workers)]:
                future.result()
            for future in [pool.submit(queries, w) for w in range(workers)]:
                future.result()

    return run


def bench(args):
    from favorkern import draw_projection, favor_attention, softmax_attention

    W = draw_projection(M, D, random_state=0)
    baseline = load_checkout(args.baseline).favor_attention if args.baseline else None
    rows = []
    for exp in range(args.min_exp, args.max_exp + 1):
        length = 2**exp
        Q, K, V = inputs(length)
        qkv = (Q, K, V)
        fns = {
            "floor BLAS": floor_products(Q, K, V, W),
            "floor split": floor_products(Q, K, V, W, split=True),
            "bidir": partial(favor_attention, *qkv, projection_matrix=W),
            "causal": partial(favor_attention, *qkv, projection_matrix=W, causal=True),
        }
        if baseline is not None:
            fns["base"] = partial(baseline, *qkv, projection_matrix=W)
            fns["base causal"] = partial(baseline, *qkv, projection_matrix=W, causal=True)
        if args.methods:
            for method in ("chunked", "recurrent"):
                fns[method] = partial(
                    favor_attention, *qkv, projection_matrix=W, causal=True, method=method
                )
        if exp <= args.exact_max_exp:
            fns["exact"] = partial(softmax_attention, *qkv)
        peer = performer(Q, K, V, W) if exp <= args.peer_max_exp else None
        if peer is not None:
            fns["performer"] = peer
        peer = fast_transformers_causal(Q, K, V, W) if exp <= args.peer_max_exp else None
        if peer is not None:
            fns["fast-transformers"] = peer
        row = round_robin(fns, args.repeats)
        row["floor"] = min(row.pop("floor BLAS"), row.pop("floor split"))
        row["L"] = length
        rows.append(row)
        print_row(row, args.methods, header=len(rows) == 1, base=baseline is not None)
        sys.stdout.flush()
    summary(rows)


def print_row(row, methods, header, base=False):
    cols = ["L", "floor ms", "bidir ms", "bidir/floor", "causal ms", "causal/bidir"]
    if base:
        cols += ["base ms", "base/floor", "base causal", "bcausal/bidir"]
    if methods:
        cols += ["chunked ms", "recurrent ms"]
    cols += ["exact ms", "bidir/exact", "performer ms", "perf/bidir"]
    cols += ["ft-causal ms", "ft/causal", "bidir us/tok"]
    if header:
        print(" ".join(f"{c:>12}" for c in cols))
    L = row["L"]
    values = [
        f"{L:>12d}",
        f"{row['floor'] * 1e3:12.2f}",
        f"{row['bidir'] * 1e3:12.2f}",
        f"{row['bidir'] / row['floor']:12.2f}",
        f"{row['causal'] * 1e3:12.2f}",
        f"{row['causal'] / row['bidir']:12.2f}",
    ]
    if base:
        values += [f"{row['base'] * 1e3:12.2f}", f"{row['base'] / row['floor']:12.2f}"]
        values += [
            f"{row['base causal'] * 1e3:12.2f}",
            f"{row['base causal'] / row['bidir']:12.2f}",
        ]
    if methods:
        values += [f"{row['chunked'] * 1e3:12.2f}", f"{row['recurrent'] * 1e3:12.2f}"]
    for key, ratio in (
        ("exact", row.get("exact", 0) and row["bidir"] / row.get("exact", 1)),
        ("performer", row.get("performer", 0) and row.get("performer", 0) / row["bidir"]),
        (
            "fast-transformers",
            row.get("fast-transformers", 0) and row.get("fast-transformers", 0) / row["causal"],
        ),
    ):
        if key in row:
            values += [f"{row[key] * 1e3:12.2f}", f"{ratio:12.2f}"]
        else:
            values += [f"{'-':>12}", f"{'-':>12}"]
    values += [f"{row['bidir'] / L * 1e6:12.3f}"]
    print(" ".join(values))


def summary(rows):
    print()
    worst_floor = max(row["bidir"] / row["floor"] for row in rows)
    worst_causal = (
        max(row["causal"] / row["bidir"] for row in rows if row["L"] >= 2**12)
        if any(row["L"] >= 2**12 for row in rows)
        else float("nan")
    )
    print(f"bidir / floor, worst:  {worst_floor:.2f}")
    if any("base" in row for row in rows):
        worst_base = max(row["base"] / row["floor"] for row in rows)
        print(f"baseline bidir / floor, worst:  {worst_base:.2f}")
        long = [row["base causal"] / row["bidir"] for row in rows if row["L"] >= 2**12]
        if long:
            print(f"baseline causal / bidir, worst at L >= 2^12: {max(long):.2f}")
    print(f"causal / bidir, worst at L >= 2^12: {worst_causal:.2f}")
    peers = [row["performer"] / row["bidir"] for row in rows if "performer" in row]
    if peers:
        print(f"performer-pytorch / bidir, least: {min(peers):.2f}")
    else:
        print("performer-pytorch not timed (not installed, or --peer-max-exp below --min-exp)")
    peers = [row["fast-transformers"] / row["causal"] for row in rows if "fast-transformers" in row]
    if peers:
        print(
            f"fast-transformers/causal (its causal kernel / favorkern causal), least: {min(peers):.2f}"
        )
    else:
        print("fast-transformers not timed (not installed, or --peer-max-exp below --min-exp)")
    slower = [row["L"] for row in rows if "exact" in row and row["bidir"] >= row["exact"]]
    print(f"L where favor is not faster than exact: {slower or 'none'}")
    long = [row for row in rows if row["L"] >= 2**13]
    if long:
        print(
            f"from L = 2^13: bidir / floor, worst: {max(r['bidir'] / r['floor'] for r in long):.2f}"
        )
        peers = [r["performer"] / r["bidir"] for r in long if "performer" in r]
        if peers:
            print(f"from L = 2^13: performer-pytorch / bidir, least: {min(peers):.2f}")
        peers = [r["fast-transformers"] / r["causal"] for r in long if "fast-transformers" in r]
        if peers:
            print(f"from L = 2^13: fast-transformers / causal, least: {min(peers):.2f}")
    print_machine()


def many_heads(args):
    """Time per FLOP of 12 heads of d = 32 against one head of d = 64 at L = 2^16.

    With ``--baseline``, the other checkout's calls run in the same round robin, each
    against its own one-head figure (``base per-FLOP``).
    """
    from favorkern import draw_projection, favor_attention

    heads, d_small = 12, 32
    W64 = draw_projection(M, D, random_state=0)
    W32 = draw_projection(M, d_small, random_state=0)
    baseline = load_checkout(args.baseline).favor_attention if args.baseline else None
    calls = {"": favor_attention} if baseline is None else {"": favor_attention, "base ": baseline}
    big = inputs(2**16)
    fns, flops = {}, {}
    for prefix, fn in calls.items():
        fns[prefix + "one head d=64 L=65536"] = partial(fn, *big, projection_matrix=W64)
        flops[prefix + "one head d=64 L=65536"] = 2**16 * 4 * M * (D + D)
        for exp in range(9, 13):
            name = f"{prefix}12 heads d=32 L={2**exp}"
            qkv = inputs(2**exp, d=d_small, batch=(1, heads))
            fns[name] = partial(fn, *qkv, projection_matrix=W32)
            flops[name] = heads * 2**exp * 4 * M * (d_small + d_small)
    times = round_robin(fns, args.repeats)
    one = {
        prefix: times[prefix + "one head d=64 L=65536"] / (2**16 * 4 * M * (D + D))
        for prefix in calls
    }
    print(
        f"\n{'case':<26} {'ms':>9} {'ns/token/head':>14} {'GFLOP/s':>8} {'per-FLOP / one head':>20}"
        + (f" {'base per-FLOP':>14}" if baseline is not None else "")
    )
    for name in [n for n in fns if not n.startswith("base ")]:
        t = times[name]
        n_tokens = flops[name] / (4 * M * (D + D) if "d=64" in name else 4 * M * 2 * d_small)
        line = (
            f"{name:<26} {t * 1e3:9.2f} {t / n_tokens * 1e9:14.1f} {flops[name] / t / 1e9:8.1f} "
            f"{t / flops[name] / one['']:20.2f}"
        )
        if baseline is not None:
            line += f" {times['base ' + name] / flops[name] / one['base ']:14.2f}"
        print(line)
    print("per-FLOP ratio: 12 heads of d = 32 against one head of d = 64")
    if baseline is not None:
        print(
            "one head d=64 L=65536, this checkout / baseline: "
            f"{times['one head d=64 L=65536'] / times['base one head d=64 L=65536']:.2f}"
        )
    print_machine()


def crossover(args):
    """favor_attention against softmax_attention at small L, and method="auto"'s choice."""
    from favorkern import draw_projection, favor_attention, softmax_attention
    from favorkern._config import EXACT_ATTENTION_CROSSOVER
    from favorkern.attention.common import exact_is_faster

    W = draw_projection(M, D, random_state=0)
    print(f"\n{'L':>6} {'favor ms':>9} {'exact ms':>9} {'exact/favor':>12} {'auto picks':>11}")
    for length in (128, 256, 384, 512, 768, 1024, 1536, 2048):
        Q, K, V = inputs(length)
        times = round_robin(
            {
                "favor": partial(favor_attention, Q, K, V, projection_matrix=W),
                "exact": partial(softmax_attention, Q, K, V),
            },
            args.repeats,
        )
        pick = "exact" if exact_is_faster(length, length, M) else "favor"
        print(
            f"{length:>6} {times['favor'] * 1e3:9.3f} {times['exact'] * 1e3:9.3f} "
            f"{times['exact'] / times['favor']:12.2f} {pick:>11}"
        )
    print(f"rule: exact where Lq Lk <= {EXACT_ATTENTION_CROSSOVER} m (Lq + Lk)")
    print_machine()


_CHILD = """
import json, resource, sys, numpy as np
sys.path.insert(0, {bench_dir!r})
from bench_attention import inputs, D, M
from favorkern import draw_projection, favor_attention
length, causal = {length}, {causal}
Q, K, V = inputs(length)
W = draw_projection(M, D, random_state=0)
out = np.empty_like(V); out[...] = 0  # resident output-sized block for the baseline
cold = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
favor_attention(Q[:4096], K[:4096], V[:4096], projection_matrix=W, causal=causal)  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
del out
result = favor_attention(Q, K, V, projection_matrix=W, causal=causal)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"cold_kib": cold, "before_kib": before, "after_kib": after}}))
"""


def memory(args):
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    # inputs+out: peak RSS with the inputs and an output-sized array resident, before
    # any attention call; warm-up: after one call at L = 4096 (thread pool, buffers,
    # BLAS); peak: after the call at L.  extra = peak - inputs+out.
    print(
        f"{'L':>9} {'mode':>7} {'inputs+out MiB':>15} {'warm-up MiB':>12} {'peak MiB':>9} "
        f"{'extra MiB':>10}"
    )
    for exp in sorted({min(16, args.max_exp), args.max_exp}):
        for causal in (False, True):
            code = _CHILD.format(bench_dir=bench_dir, length=2**exp, causal=causal)
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            data = json.loads(result.stdout.strip().splitlines()[-1])
            cold, warm, after = (
                data[key] / 1024 for key in ("cold_kib", "before_kib", "after_kib")
            )
            mode = "causal" if causal else "bidir"
            print(
                f"{2**exp:>9} {mode:>7} {cold:15.1f} {warm:12.1f} {after:9.1f} {after - cold:10.1f}"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-exp", type=int, default=10, help="smallest L = 2^min-exp")
    parser.add_argument("--max-exp", type=int, default=20, help="largest L = 2^max-exp")
    parser.add_argument("--exact-max-exp", type=int, default=15, help="exact attention up to")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    parser.add_argument("--methods", action="store_true", help="also time both causal methods")
    parser.add_argument("--memory", action="store_true", help="peak RSS instead of timings")
    parser.add_argument(
        "--peer-max-exp", type=int, default=18, help="performer-pytorch and fast-transformers up to"
    )
    parser.add_argument(
        "--baseline", default=None, help="checkout whose bidirectional favor_attention to time too"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="one thread (FAVORKERN_NUM_THREADS=1, BLAS at one thread) timed in CPU "
        "seconds: the least noisy comparison on a loaded machine",
    )
    parser.add_argument(
        "--tables",
        default="sweep,heads,crossover",
        help="comma-separated tables to print: sweep, heads, crossover",
    )
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least 5 runs)")
    if args.memory:
        memory(args)
        return
    if args.cpu:
        global CPU_TIME
        from threadpoolctl import threadpool_limits

        CPU_TIME = True
        os.environ["FAVORKERN_NUM_THREADS"] = "1"
        threadpool_limits(1)  # for the rest of the run
        try:
            import torch

            torch.set_num_threads(1)  # the peers on one thread too
        except ImportError:
            pass
        print("one thread, CPU seconds (--cpu)")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    tables = set(args.tables.split(","))
    if "sweep" in tables:
        bench(args)
    if "heads" in tables:
        many_heads(args)
    if "crossover" in tables:
        crossover(args)
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()

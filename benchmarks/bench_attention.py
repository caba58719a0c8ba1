"""Benchmark favor_attention against its matrix-product floor and exact attention.

A script, not a test.  d = 64, m = 256, float32, one head; medians of ``--repeats``
runs; L = 2^min-exp ... 2^max-exp.  Columns:

* ``floor``: the four bare matrix products of bidirectional FAVOR at the same
  shapes (Q W^T, K W^T, phi(K)^T V, phi(Q) S), BLAS on all threads;
* ``bidir`` / ``causal``: ``favor_attention`` (``causal`` with ``method="auto"``, plus
  ``--methods`` to time both causal algorithms);
* ``exact``: ``softmax_attention`` (up to 2^exact-max-exp);
* ratios and time per token.

Targets (DESIGN.md): bidir <= 1.5x floor; causal <= 2x bidir; faster than exact from
L = 1024; time per token at 2^20 within 1.25x of that at 2^14.

``--memory`` instead measures the peak RSS of favor_attention at L = 2^16 and
2^max-exp in child processes (bidirectional and causal), against the inputs and
an output-sized array.

Usage::

    python benchmarks/bench_attention.py                    # full table, 2^10 .. 2^20
    python benchmarks/bench_attention.py --max-exp 16 --repeats 5 --methods
    python benchmarks/bench_attention.py --memory --max-exp 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial

import numpy as np

D, M = 64, 256


def median_time(fn, repeats):
    fn()  # warm-up (compilation, page faults, thread pool)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def inputs(length, seed=0):
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.standard_normal((length, D), dtype=np.float32) * 0.5 for _ in range(3))
    return Q, K, V


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
    rows = []
    for exp in range(args.min_exp, args.max_exp + 1):
        length = 2**exp
        repeats = args.repeats
        Q, K, V = inputs(length)
        row = {"L": length}
        # the floor: the better of BLAS threading and row blocks over our thread pool
        row["floor"] = min(
            median_time(floor_products(Q, K, V, W), repeats),
            median_time(floor_products(Q, K, V, W, split=True), repeats),
        )
        qkv = (Q, K, V)
        row["bidir"] = median_time(partial(favor_attention, *qkv, projection_matrix=W), repeats)
        row["causal"] = median_time(
            partial(favor_attention, *qkv, projection_matrix=W, causal=True), repeats
        )
        if args.methods:
            for method in ("chunked", "recurrent"):
                row[method] = median_time(
                    partial(favor_attention, *qkv, projection_matrix=W, causal=True, method=method),
                    repeats,
                )
        if exp <= args.exact_max_exp:
            row["exact"] = median_time(partial(softmax_attention, *qkv), repeats)
        rows.append(row)
        print_row(row, args.methods, header=len(rows) == 1)
        sys.stdout.flush()
    summary(rows)


def print_row(row, methods, header):
    cols = ["L", "floor ms", "bidir ms", "bidir/floor", "causal ms", "causal/bidir"]
    if methods:
        cols += ["chunked ms", "recurrent ms"]
    cols += ["exact ms", "bidir/exact", "bidir us/tok", "causal us/tok"]
    if header:
        print(" ".join(f"{c:>13}" for c in cols))
    L = row["L"]
    values = [
        f"{L:>13d}",
        f"{row['floor'] * 1e3:13.2f}",
        f"{row['bidir'] * 1e3:13.2f}",
        f"{row['bidir'] / row['floor']:13.2f}",
        f"{row['causal'] * 1e3:13.2f}",
        f"{row['causal'] / row['bidir']:13.2f}",
    ]
    if methods:
        values += [f"{row['chunked'] * 1e3:13.2f}", f"{row['recurrent'] * 1e3:13.2f}"]
    if "exact" in row:
        values += [f"{row['exact'] * 1e3:13.2f}", f"{row['bidir'] / row['exact']:13.3f}"]
    else:
        values += [f"{'-':>13}", f"{'-':>13}"]
    values += [f"{row['bidir'] / L * 1e6:13.3f}", f"{row['causal'] / L * 1e6:13.3f}"]
    print(" ".join(values))


def summary(rows):
    by_length = {row["L"]: row for row in rows}
    print()
    worst_floor = max(row["bidir"] / row["floor"] for row in rows)
    worst_causal = max(row["causal"] / row["bidir"] for row in rows)
    print(f"bidir / floor, worst:  {worst_floor:.2f}  (target <= 1.5)")
    print(f"causal / bidir, worst: {worst_causal:.2f}  (target <= 2)")
    slower = [row["L"] for row in rows if "exact" in row and row["bidir"] >= row["exact"]]
    print(f"L where favor is not faster than exact: {slower or 'none'}  (target: none >= 1024)")
    if 2**14 in by_length and 2**20 in by_length:
        for kind in ("bidir", "causal"):
            ratio = (by_length[2**20][kind] / 2**20) / (by_length[2**14][kind] / 2**14)
            print(f"{kind} time per token, 2^20 / 2^14: {ratio:.2f}  (target <= 1.25)")


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
    import os

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
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians of at least 5 runs)")
    if args.memory:
        memory(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()

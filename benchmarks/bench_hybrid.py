"""Benchmark hybrid attention against FAVOR and exact attention (torch SDPA).

A script, not a test.  One thread, CPU time (``time.process_time``), medians of
rounds in which the contestants run in a new random order; every ratio is against
``favor_attention`` timed in the same run.  Heads of d = dv = 64, float32, m = 256,
causal unless ``--bidirectional``.

Contestants per L:

* ``favor``: ``favor_attention`` (the baseline of the ratios);
* ``hybrid 64/1``: ``hybrid_attention`` with window 64 and one global key;
* ``top 16/128``: the same with each query's 16 top keys of 128 candidates;
* ``per-head``: windows (16, 32, 64, 128) and top keys (0, 8, 16, 32) of 128 candidates
  over the four heads;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (exact, CPU flash
  attention; skipped where torch is not installed).

The table is followed by the machine's SIMD level, BLAS core and elementwise kernels.

Run in a fresh process with every thread count at 1::

    FAVORKERN_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        NUMBA_NUM_THREADS=1 python benchmarks/bench_hybrid.py --lengths 12 13 14
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from timing import print_machine


def process_round_robin(fns, repeats):
    """Median CPU seconds of each of ``fns``, one run of each per round, in a new
    (seeded) random order every round."""
    for fn in fns.values():
        fn()  # warm-up: compilation, page faults
    times = {name: [] for name in fns}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(list(fns)):
            start = time.process_time()
            fns[name]()
            times[name].append(time.process_time() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def sdpa(Q, K, V, causal):
    """torch's exact attention, or None where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    # (batch, heads, L, d): the 4-D layout takes the CPU flash kernel (3-D falls back
    # to the O(L^2)-memory math path, 6.7x slower here)
    q, k, v = (torch.from_numpy(X[np.newaxis]) for X in (Q, K, V))

    def run():
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[12, 13, 14],
                        help="log2 of the sequence lengths")  # fmt: skip
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bidirectional", action="store_true")
    args = parser.parse_args()
    from favorkern import favor_attention, hybrid_attention

    causal = not args.bidirectional
    H, d = args.heads, 64
    print(f"hybrid attention, {H} heads, d = dv = {d}, m = 256, float32, "
          f"{'causal' if causal else 'bidirectional'}; one thread, CPU seconds (median of "
          f"{args.repeats}); load {os.getloadavg()[0]:.1f}")  # fmt: skip
    header = ["L", "favor", "hybrid 64/1", "top 16/128", "per-head", "sdpa"]
    print(" | ".join(f"{h:>22}" for h in header))
    rng = np.random.default_rng(0)
    per_token = {}
    for log_length in args.lengths:
        L = 2**log_length
        Q, K, V = (rng.normal(size=(H, L, d)).astype(np.float32) for _ in range(3))
        u = rng.normal(size=(H, d))  # a scoring direction per head
        common = dict(causal=causal, random_state=0)
        windows = np.array([16, 32, 64, 128][:H] + [64] * max(0, H - 4))
        tops = np.array([0, 8, 16, 32][:H] + [16] * max(0, H - 4))
        fns = {
            "favor": lambda: favor_attention(Q, K, V, **common),
            "hybrid 64/1": lambda: hybrid_attention(Q, K, V, window=64, n_global=1, **common),
            "top 16/128": lambda: hybrid_attention(
                Q, K, V, window=64, n_global=1, n_top=16, n_candidates=128,
                candidate_query=u, **common,
            ),  # fmt: skip
            "per-head": lambda: hybrid_attention(
                Q, K, V, window=windows, n_global=1, n_top=tops, n_candidates=128,
                candidate_query=u, **common,
            ),  # fmt: skip
        }
        exact = sdpa(Q, K, V, causal)
        if exact is not None:
            fns["sdpa"] = exact
        times = process_round_robin(fns, args.repeats)
        base = times["favor"]
        cells = [f"{L:>22}"]
        for name in header[1:]:
            if name not in times:
                cells.append(f"{'-':>22}")
                continue
            cells.append(f"{times[name]:>9.3f} s ({times[name] / base:5.2f}x)")
        print(" | ".join(cells), flush=True)
        per_token[L] = {name: t / L for name, t in times.items()}
        if exact is not None:
            print(f"{'':>22}   sdpa / hybrid 64/1 = {times['sdpa'] / times['hybrid 64/1']:.2f}, "
                  f"sdpa / top 16/128 = {times['sdpa'] / times['top 16/128']:.2f}")  # fmt: skip
    print_machine()
    lengths = sorted(per_token)
    if len(lengths) > 1:
        first, last = lengths[0], lengths[-1]
        growth = {n: per_token[last][n] / per_token[first][n] for n in per_token[first]}
        print(f"time per token at L = {last} over L = {first}: "
              + ", ".join(f"{n} {g:.2f}" for n, g in growth.items()))  # fmt: skip


if __name__ == "__main__":
    main()

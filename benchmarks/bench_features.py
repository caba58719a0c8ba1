"""Transform time of every feature map against the bare product and RBFSampler.

Run: ``PYTHONPATH=. python benchmarks/bench_features.py [--n 200000] [--d 64] [--m 256]
[--repeats 7]`` and ``... --structured`` for structured (SORF, fast Walsh-Hadamard)
against dense orthogonal projections at d in {64, 256, 1024}.

Prints, per dtype, the median time of each map's ``transform`` (every registered map,
each kernel it estimates) and its ratio to ``RBFSampler.transform`` at the same width
and to the bare product ``X @ W.T`` of the same output width into a fresh array: the
better of BLAS on all threads and row blocks over favorkern's thread pool (BLAS on one
thread each).  The contestants of a dtype are timed round-robin (one run of each in
turn), so the ratios share the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from sklearn.kernel_approximation import RBFSampler

from favorkern import PositiveRandomFeatures


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_robin(fns, repeats):
    """Median seconds of each of ``fns`` (a dict), timed one run of each in turn."""
    for fn in fns.values():
        fn()  # warm-up (compilation, thread pool)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def blocked_product(X, W_t):
    """``X @ W_t`` into a fresh array by row blocks over favorkern's pool (BLAS 1 thread)."""
    from favorkern.feature_maps._evaluate import run_row_blocks

    def run():
        out = np.empty((X.shape[0], W_t.shape[1]), dtype=X.dtype)

        def block(start, stop):
            np.matmul(X[start:stop], W_t, out=out[start:stop])

        run_row_blocks(X.shape[0], W_t.shape[1], X.dtype.itemsize, block)
        return out

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--structured", action="store_true", help="structured vs dense")
    args = parser.parse_args(argv)
    if args.structured:
        return structured(args)

    from threadpoolctl import threadpool_info

    blas = [
        (i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"
    ]
    print(f"n={args.n} d={args.d} m={args.m} cores={os.cpu_count()} blas={blas}")
    print(f"median of {args.repeats} runs; ratios against baselines timed in the same run\n")
    header = f"{'dtype':<8} {'method':<36} {'time [ms]':>10} {'/ RBFSampler':>13} {'/ bare':>10}"
    print(header)
    print("-" * len(header))
    from favorkern.feature_maps import feature_map_names, get_feature_map
    from favorkern.features import RandomFeatures

    rng = np.random.default_rng(0)
    worst = {}
    for dtype in (np.float32, np.float64):
        X = rng.normal(scale=0.5 / np.sqrt(args.d), size=(args.n, args.d)).astype(dtype)
        W_t = np.ascontiguousarray(rng.normal(size=(args.m, args.d)).astype(dtype).T)
        rbf = RBFSampler(n_components=args.m, random_state=0).fit(X)
        methods = {
            "bare product, BLAS threads": lambda X=X, W_t=W_t: X @ W_t,
            "bare product, row blocks": blocked_product(X, W_t),
            "RBFSampler": lambda X=X: rbf.transform(X),
        }
        for name in feature_map_names():
            for kernel in get_feature_map(name).kernels or ("softmax",):
                est = RandomFeatures(name, n_components=args.m, kernel=kernel, random_state=0)
                est.fit(X[:1000])
                methods[f"{name} {kernel}"] = lambda X=X, est=est: est.transform(X)
        times = round_robin(methods, args.repeats)
        bare = min(times["bare product, BLAS threads"], times["bare product, row blocks"])
        for name, t in times.items():
            if not name.startswith("bare"):
                worst[(np.dtype(dtype).name, name)] = t / bare
            print(
                f"{np.dtype(dtype).name:<8} {name:<36} {1e3 * t:>10.1f} "
                f"{t / times['RBFSampler']:>13.2f} {t / bare:>10.2f}"
            )
        print()
    over = {k: v for k, v in worst.items() if v > 1.3 and k[1] != "RBFSampler"}
    print(
        "maps above 1.3x the bare product:",
        ", ".join(f"{d} {n} ({r:.2f})" for (d, n), r in over.items()) or "none",
    )


def structured(args):
    """PositiveRandomFeatures transform: projection='structured' vs 'orthogonal' (dense BLAS).

    The structured map switches to the O(d log d) Walsh-Hadamard kernel from d_pad >= 512
    (``favorkern.feature_maps._evaluate.SORF_MIN_PADDED_DIMS``); the 'forced' column times that
    kernel at every d, to show where it wins.
    """
    from favorkern.feature_maps._evaluate import SorfProjector

    print(f"n={args.n // 10} rows, m = max(256, d); median of {args.repeats} runs")
    header = f"{'dtype':<8} {'d':>5} {'dense [ms]':>11} {'structured [ms]':>16} {'forced FWHT [ms]':>17} {'forced / dense':>15}"
    print(header)
    print("-" * len(header))
    for dtype in (np.float32, np.float64):
        for d in (64, 256, 1024):
            m = max(256, d)
            X = (
                np.random.default_rng(0)
                .normal(scale=0.3 / np.sqrt(d), size=(args.n // 10, d))
                .astype(dtype)
            )
            dense = PositiveRandomFeatures(m, projection="orthogonal", random_state=0).fit(X[:2])
            sorf = PositiveRandomFeatures(m, projection="structured", random_state=0).fit(X[:2])
            spec = sorf._spec()
            signs, factors, _ = sorf._sorf
            forced = type(spec)(
                **{**spec.__dict__, "projector": SorfProjector(signs, factors, sorf._input_scale())}
            )
            from favorkern.feature_maps._evaluate import apply_feature_map

            t_dense = median_time(lambda: dense.transform(X), args.repeats)
            t_sorf = median_time(lambda: sorf.transform(X), args.repeats)
            t_forced = median_time(lambda: apply_feature_map(X, forced), args.repeats)
            print(
                f"{np.dtype(dtype).name:<8} {d:>5} {1e3 * t_dense:>11.1f} {1e3 * t_sorf:>16.1f} "
                f"{1e3 * t_forced:>17.1f} {t_forced / t_dense:>15.2f}"
            )


if __name__ == "__main__":
    main()

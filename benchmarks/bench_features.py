"""Transform time of the feature maps against RBFSampler and the bare product.

Run: ``python benchmarks/bench_features.py [--n 200000] [--d 64] [--m 256] [--repeats 7]``
and ``python benchmarks/bench_features.py --structured`` for structured (SORF, fast
Walsh-Hadamard) against dense orthogonal projections at d in {64, 256, 1024}.

Prints, per dtype, the median time of each transform and its ratio to
``RBFSampler.transform`` at the same width and to the bare ``X @ W.T`` (BLAS with
its default threads), all timed in the same run.  Targets (DESIGN.md):
<= 1.0x RBFSampler, <= 1.5x the bare product.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from sklearn.kernel_approximation import RBFSampler

from favorkern import (
    HyperbolicRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
)


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    header = f"{'dtype':<8} {'method':<36} {'time [ms]':>10} {'/ RBFSampler':>13} {'/ X @ W.T':>10}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        X = rng.normal(scale=0.5 / np.sqrt(args.d), size=(args.n, args.d)).astype(dtype)
        W_t = np.ascontiguousarray(rng.normal(size=(args.m, args.d)).astype(dtype).T)
        rbf = RBFSampler(n_components=args.m, random_state=0).fit(X)
        methods = {
            "X @ W.T (bare product)": lambda X=X, W_t=W_t: X @ W_t,
            "RBFSampler": lambda X=X: rbf.transform(X),
        }
        for name, est in [
            ("PositiveRandomFeatures softmax", PositiveRandomFeatures(args.m, random_state=0)),
            (
                "PositiveRandomFeatures rbf",
                PositiveRandomFeatures(args.m, kernel="rbf", random_state=0),
            ),
            ("HyperbolicRandomFeatures softmax", HyperbolicRandomFeatures(args.m, random_state=0)),
            (
                "TrigonometricRandomFeatures rbf",
                TrigonometricRandomFeatures(args.m, kernel="rbf", random_state=0),
            ),
        ]:
            est.fit(X[:10])
            methods[name] = lambda X=X, est=est: est.transform(X)
        times = {name: median_time(fn, args.repeats) for name, fn in methods.items()}
        for name, t in times.items():
            print(
                f"{np.dtype(dtype).name:<8} {name:<36} {1e3 * t:>10.1f} "
                f"{t / times['RBFSampler']:>13.2f} {t / times['X @ W.T (bare product)']:>10.2f}"
            )
        print()


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

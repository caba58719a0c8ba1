"""Fit time of PositiveRandomFeatures at large input dimension: orthogonal against gaussian.

Run: ``python benchmarks/bench_projection_fit.py [--m 256] [--repeats 5]``

Fitting draws the projection; for m < d the orthogonal projection is one thin
block (the sign-fixed thin QR of a d x m Gaussian, O(d m^2)).  Prints the median
fit time at d = 3000 (dense) and d = 50000 (sparse, text-like) for the orthogonal
and the iid gaussian projection, timed in the same run, their ratio, and the peak
memory traced during one orthogonal fit.  A full d x d block would need
d^2 * 8 bytes: 72 MB at d = 3000, 18.6 GiB at d = 50000.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp

from favorkern import PositiveRandomFeatures


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
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    inputs = {
        "d=3000 dense": rng.standard_normal((2000, 3000)) / np.sqrt(3000),
        "d=50000 sparse": sp.random(2000, 50_000, density=4e-4, format="csr", random_state=0),
    }
    print(f"m={args.m} cores={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    print(f"median of {args.repeats} fits; gaussian timed in the same run\n")
    header = (
        f"{'input':<16} {'orthogonal [s]':>15} {'gaussian [s]':>13} {'ratio':>7} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, X in inputs.items():
        times = {}
        for kind in ("orthogonal", "gaussian"):
            model = PositiveRandomFeatures(args.m, projection=kind, random_state=0)
            times[kind] = median_time(lambda model=model: model.fit(X), args.repeats)
        tracemalloc.start()
        PositiveRandomFeatures(args.m, random_state=1).fit(X)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        ratio = times["orthogonal"] / times["gaussian"]
        print(
            f"{name:<16} {times['orthogonal']:15.4f} {times['gaussian']:13.4f} {ratio:7.1f} "
            f"{peak:9.1f}"
        )
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

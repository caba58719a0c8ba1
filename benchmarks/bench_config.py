"""The tuning constants of ``favorkern._config``, re-measured: CPU time against the value.

Run (one thread, as the constants were measured):

    FAVORKERN_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_config.py [--repeats 7] \\
    [--only EXACT_CHUNK_SCORES ...]

For each constant below, the same call runs under ``favorkern._config.override`` with
each candidate value, round-robin (one run of each value in turn, in a new random
order every round), and the table gives the median CPU time (``time.process_time``)
of each value and its ratio to the current default.  The thresholds that decide
between one thread and several (``*_PARALLEL_MIN_*``) need wall time on an idle
machine with several cores, and are not swept here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from favorkern import _config


def _inputs(shape, dv=64, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    Q, K = (rng.normal(scale=0.5, size=shape).astype(dtype) for _ in range(2))
    V = rng.normal(size=shape[:-1] + (dv,)).astype(dtype)
    return Q, K, V


def _exact():
    from favorkern import softmax_attention

    Q, K, V = _inputs((4096, 64))
    return lambda: softmax_attention(Q, K, V)


def _hybrid():
    from favorkern import hybrid_attention

    Q, K, V = _inputs((4096, 64))
    W = np.random.default_rng(1).normal(size=(256, 64))
    return lambda: hybrid_attention(Q, K, V, window=64, projection_matrix=W)


def _favor():
    from favorkern import favor_attention

    Q, K, V = _inputs((16384, 64))
    W = np.random.default_rng(1).normal(size=(256, 64))
    return lambda: favor_attention(Q, K, V, projection_matrix=W)


def _monte_carlo():
    from favorkern.diagnostics import empirical_mse

    rng = np.random.default_rng(2)
    x, y = (rng.normal(scale=0.3, size=(16, 16)) for _ in range(2))
    return lambda: empirical_mse(
        x, y, feature_map="positive", n_components=64, n_trials=2000, random_state=0
    )


def _variance():
    from favorkern.diagnostics import theoretical_mse

    rng = np.random.default_rng(3)
    x, y = (rng.normal(scale=2.0, size=(2000, 16)) for _ in range(2))
    return lambda: theoretical_mse(
        x, y, feature_map="positive", n_components=64, projection="orthogonal"
    )


#: constant -> (the call, candidate values)
SWEEPS = {
    "EXACT_CHUNK_SCORES": (_exact, [1 << 16, 1 << 18, 1 << 20, 1 << 22]),
    "HYBRID_CHUNK_ROWS": (_hybrid, [64, 128, 256, 512]),
    "ATTENTION_CHUNK_BYTES": (_favor, [1 << 17, 1 << 19, 1 << 21]),
    "MONTE_CARLO_CHUNK_ELEMENTS": (_monte_carlo, [1 << 18, 1 << 20, 1 << 22]),
    "VARIANCE_CHUNK_ELEMENTS": (_variance, [1 << 20, 1 << 22, 1 << 24]),
}


def sweep(name, repeats):
    make, values = SWEEPS[name]
    call = make()
    default = getattr(_config, name)
    values = sorted(set(values) | {default})

    def run(value):
        with _config.override(**{name: value}):
            start = time.process_time()
            call()
            return time.process_time() - start

    for value in values:
        run(value)  # warm-up: compilation, page faults
    times = {value: [] for value in values}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for value in order.permutation(values):
            times[int(value)].append(run(int(value)))
    medians = {value: float(np.median(t)) for value, t in times.items()}
    print(f"\n{name} (default {default})")
    print(f"{'value':>12} {'CPU ms':>9} {'/ default':>10}")
    for value in values:
        print(f"{value:>12} {medians[value] * 1e3:9.1f} {medians[value] / medians[default]:10.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", choices=sorted(SWEEPS), default=sorted(SWEEPS))
    args = parser.parse_args()
    for name in args.only:
        sweep(name, args.repeats)


if __name__ == "__main__":
    main()

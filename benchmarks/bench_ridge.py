"""Benchmark streaming RandomFeatureRidge against in-memory pipelines and exact kernel ridge.

A script, not a test.  Data: ``friedman1`` (d = 10, noise 1), generated chunk by chunk
into preallocated arrays; rbf kernel, ``gamma`` and ``alpha`` fixed (``--gamma``,
``--alpha``); a held-out set of ``--n-test`` rows for ``predict`` and ``R^2``.

Every configuration (method, n, m, dtype) runs in its own subprocess, so that the
peak memory is that configuration's.  Reported per configuration:

* ``fit`` / ``predict``: wall seconds, one run (a fit at n >= 10^6 takes seconds to
  minutes; the machine load is printed with the table), and the CPU seconds of the
  fit (user + system, all threads: less sensitive to other jobs than the wall time);
* ``fit MB``: the peak resident memory *during* ``fit`` above the resident memory
  just before it (the input X, y and the imports), sampled every 5 ms from
  ``/proc/self/statm`` in a thread;
* ``floor`` (streaming rows): the time to map all rows to features (blockwise,
  discarding them) plus ``n m^2 / rate`` with ``rate`` the GEMM flop rate measured in
  the same process (a (4096 x m) by (m x m) product): the symmetric rank-k update
  that forms the m x m scatter matrix does ``n m^2 / 2`` multiply-adds.  ``x floor``
  is fit / floor; ``x floor (CPU)`` the same in CPU seconds (features and GEMM timed
  in CPU seconds too), the fairer figure on a machine shared with other jobs.

Methods: ``streaming`` (:class:`favorkern.RandomFeatureRidge`, one alpha, one pass),
``streaming-grid`` (13 alphas: a second pass for the exact leave-one-out errors),
``pipeline`` (``make_pipeline(same features, Ridge(alpha))``), ``rbfsampler``
(``make_pipeline(RBFSampler, Ridge)``), ``nystroem`` (``make_pipeline(Nystroem,
Ridge)``) and ``kernelridge`` (exact, O(n^2) memory).  In-memory methods are skipped
when their estimated memory exceeds ``--max-gb``.

Usage::

    python benchmarks/bench_ridge.py                    # n = 1e4, 1e5; m = 512 (minutes)
    python benchmarks/bench_ridge.py --n 1000000 --m 512 2048 --methods streaming pipeline
    python benchmarks/bench_ridge.py --full             # n = 1e5, 1e6, 1e7; m = 512, 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

METHODS = ("streaming", "streaming-grid", "pipeline", "rbfsampler", "nystroem", "kernelridge")
D = 10
CHUNK = 1 << 16
GRID = np.logspace(-4, 2, 13)


# -- worker side ---------------------------------------------------------------------
def friedman1(n, seed):
    """make_friedman1's distribution, generated in chunks (no n x d temporaries)."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, D))
    y = np.empty(n)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = rng.uniform(size=(stop - start, D))
        X[start:stop] = block
        y[start:stop] = (
            10 * np.sin(np.pi * block[:, 0] * block[:, 1])
            + 20 * (block[:, 2] - 0.5) ** 2
            + 10 * block[:, 3]
            + 5 * block[:, 4]
            + rng.normal(size=stop - start)
        )
    return X, y


def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Highest RSS seen by a 5 ms sampling thread while the block runs."""

    def __enter__(self):
        self.peak = self.start = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def cpu_seconds():
    """CPU time (user + system) of this process, all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def gemm_rate(m):
    """Flop rates (per wall second, per CPU second) of a (4096 x m) @ (m x m) product.

    Medians of 3 after a warm-up; the CPU rate counts the CPU seconds of all threads.
    """
    rng = np.random.default_rng(0)
    A, B = rng.random((4096, m)), rng.random((m, m))
    A @ B
    walls, cpus = [], []
    for _ in range(3):
        cpu, start = cpu_seconds(), time.perf_counter()
        A @ B
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    flops = 2 * 4096 * m * m
    return flops / float(np.median(walls)), flops / float(np.median(cpus))


def make_model(method, m, gamma, alpha, dtype):
    from sklearn.kernel_approximation import Nystroem, RBFSampler
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    from favorkern import RandomFeatureRidge, TrigonometricRandomFeatures

    features = TrigonometricRandomFeatures(m, kernel="rbf", gamma=gamma, random_state=0)
    if method == "streaming":
        return RandomFeatureRidge(features, alphas=(alpha,))
    if method == "streaming-grid":
        return RandomFeatureRidge(features, alphas=GRID)
    if method == "pipeline":
        return make_pipeline(features, Ridge(alpha))
    if method == "rbfsampler":
        return make_pipeline(RBFSampler(gamma=gamma, n_components=m, random_state=0), Ridge(alpha))
    if method == "nystroem":
        return make_pipeline(Nystroem(gamma=gamma, n_components=m, random_state=0), Ridge(alpha))
    if method == "kernelridge":
        return KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma)
    raise ValueError(method)


def floor_seconds(model, X, m):
    """Feature-map time over all rows (blockwise) + n m^2 / GEMM rate; wall and CPU."""
    features = model.features_
    batch = model.resolved_batch_size()
    cpu, start = cpu_seconds(), time.perf_counter()
    for s in range(0, X.shape[0], batch):
        features.transform(X[s : s + batch])
    feature_wall, feature_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    wall_rate, cpu_rate = gemm_rate(m)
    flops = X.shape[0] * m * m
    return {
        "feature_time": feature_wall,
        "syrk_time": flops / wall_rate,
        "gflops": wall_rate / 1e9,
        "feature_cpu": feature_cpu,
        "syrk_cpu": flops / cpu_rate,
    }


def run_worker(config):
    from sklearn.metrics import r2_score

    method, n, m, dtype = config["method"], config["n"], config["m"], config["dtype"]
    X, y = friedman1(n, seed=0)
    X_test, y_test = friedman1(config["n_test"], seed=1)
    if dtype == "float32":
        X, X_test = X.astype(np.float32), X_test.astype(np.float32)
    model = make_model(method, m, config["gamma"], config["alpha"], dtype)
    input_mb = (X.nbytes + y.nbytes) / 2**20
    with PeakRSS() as rss:
        cpu = cpu_seconds()
        start = time.perf_counter()
        model.fit(X, y)
        fit_time = time.perf_counter() - start
        fit_cpu = cpu_seconds() - cpu
    start = time.perf_counter()
    prediction = model.predict(X_test)
    predict_time = time.perf_counter() - start
    result = {
        **config,
        "fit": fit_time,
        "fit_cpu": fit_cpu,
        "predict": predict_time,
        "fit_mb": rss.peak - rss.start,
        "before_mb": rss.start,
        "input_mb": input_mb,
        "r2": float(r2_score(y_test, prediction)),
    }
    if method.startswith("streaming"):
        result.update(floor_seconds(model, X, m), alpha_=model.alpha_)
    print("RESULT " + json.dumps(result), flush=True)


# -- driver ------------------------------------------------------------------------
def memory_estimate_gb(method, n, m, dtype):
    """Rough peak memory of the in-memory methods (features, their centred copy, X^T X)."""
    itemsize = 4 if dtype == "float32" else 8
    if method.startswith("streaming"):
        return 0.0
    if method == "kernelridge":
        return 2 * n * n * 8 / 2**30
    return 2.2 * n * m * itemsize / 2**30


def run_config(config, timeout):
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
    # the worker imports the favorkern of this checkout, not whichever is installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**config, "error": f"timeout after {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {**config, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--m", type=int, nargs="+", default=[512])
    parser.add_argument("--dtype", nargs="+", default=["float64"], choices=["float64", "float32"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--full", action="store_true", help="n = 1e5, 1e6, 1e7; m = 512, 2048")
    parser.add_argument("--gamma", type=float, default=0.2)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--n-test", type=int, default=100_000)
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip in-memory fits above")
    parser.add_argument("--max-exact", type=int, default=20_000, help="largest n of KernelRidge")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per config")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    if args.full:
        args.n, args.m = [100_000, 1_000_000, 10_000_000], [512, 2048]
    rows = []
    print(f"# load before: {os.getloadavg()}", flush=True)
    for n in args.n:
        for m in args.m:
            for dtype in args.dtype:
                for method in args.methods:
                    config = dict(
                        method=method,
                        n=n,
                        m=m,
                        dtype=dtype,
                        gamma=args.gamma,
                        alpha=args.alpha,
                        n_test=args.n_test,
                    )
                    if method == "kernelridge" and (n > args.max_exact or m != args.m[0]):
                        continue
                    estimate = memory_estimate_gb(method, n, m, dtype)
                    if estimate > args.max_gb:
                        rows.append({**config, "error": f"skipped: needs ~{estimate:.0f} GB"})
                        continue
                    row = run_config(config, args.timeout)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"# load after: {os.getloadavg()}")
    header = (
        "| n | m | dtype | method | fit s (CPU s) | predict s | fit MB (above input) | input MB "
        "| R^2 | floor s (features + syrk) | x floor | x floor (CPU) |"
    )
    print(header)
    print("|---" * 12 + "|")
    for row in rows:
        if "error" in row:
            print(
                f"| {row['n']:.0e} | {row['m']} | {row['dtype']} | {row['method']} | "
                f"{row['error']} | | | | | | | |"
            )
            continue
        floor = cpu_floor = None
        if "feature_time" in row:
            floor = row["feature_time"] + row["syrk_time"]
            cpu_floor = row["feature_cpu"] + row["syrk_cpu"] if "feature_cpu" in row else None
        print(
            f"| {row['n']:.0e} | {row['m']} | {row['dtype']} | {row['method']} "
            f"| {row['fit']:.2f} ({row['fit_cpu']:.1f}) | {row['predict']:.2f} | {row['fit_mb']:.0f} "
            f"| {row['input_mb']:.0f} | {row['r2']:.3f} "
            f"| {fmt(floor, '.2f')}"
            + (f" ({row['feature_time']:.2f} + {row['syrk_time']:.2f})" if floor else "")
            + f" | {fmt(row['fit'] / floor if floor else None, '.2f')}"
            + f" | {fmt(row['fit_cpu'] / cpu_floor if cpu_floor else None, '.2f')} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()

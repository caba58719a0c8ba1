"""Scale runs: RandomFeatureRidge and RandomFeatureLogisticRegression at 10^6-10^7 rows.

A script, not a test.  One configuration per process (so that the peak memory is that
fit's), threads fixed before numpy is imported (``--threads``, default 1).

Data: ``friedman1``'s distribution (d = 10), generated in blocks of 2^16 rows into
preallocated float64 arrays, so that the input X (n x 10), y are the only n-sized
arrays; the classifier's label is ``y > 14.4`` (about half the rows each class).  A
held-out set of ``--n-test`` rows gives R^2 or the accuracy.  rbf kernel,
``gamma = 1 / (2 d)``; ridge with one alpha (``--alpha``: one pass over the rows),
logistic with ``C`` (``--C``) and its defaults (L-BFGS, one pass per evaluation).

Reported:

* ``fit``: wall and CPU seconds (user + system, every thread) of ``fit``;
* memory: resident memory just before ``fit`` (imports, X, y), the highest resident
  memory during ``fit`` (a thread reading ``/proc/self/statm`` every 5 ms) minus it,
  the peak of ``tracemalloc`` during ``fit`` (numpy's arrays; not BLAS's buffers) and
  ``ru_maxrss`` of the process;
* ``floor``: the products the solver cannot avoid, timed after the fit in the same
  process on the first ``--floor-rows`` rows in the fit's row blocks, and scaled by
  ``n / floor_rows``.  Ridge: the feature transform of each block plus the scatter
  product ``Z^T Z`` (a BLAS ``syrk``).  Logistic: per pass, the transform, the scores
  ``Z W^T`` and the gradient product ``Z^T R`` (``--solver newton``: also the Hessian,
  a syrk of ``[Z, 1]``), times the number of passes the fit made (every pass counted
  as a full one).  ``x floor`` is fit / floor (CPU seconds: fairer on a shared machine).

Usage::

    python benchmarks/bench_scale.py ridge --n 10000000 --m 2048 --json /tmp/scale/r.json
    python benchmarks/bench_scale.py logistic --n 1000000 --m 256 --json /tmp/scale/l.json
    python benchmarks/bench_scale.py --summarize /tmp/scale/*.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time

D = 10
CHUNK = 1 << 16
THRESHOLD = 14.4  # about the median of friedman1's target
THREAD_VARIABLES = (
    "FAVORKERN_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def friedman1(n, seed):
    """make_friedman1's distribution, generated in blocks (no n x d temporaries)."""
    import numpy as np

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


class Clock:
    """Wall and CPU seconds (every thread) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def make_model(model, m, gamma, alpha, C, solver="lbfgs"):
    from favorkern import (
        RandomFeatureLogisticRegression,
        RandomFeatureRidge,
        TrigonometricRandomFeatures,
    )

    features = TrigonometricRandomFeatures(m, kernel="rbf", gamma=gamma, random_state=0)
    if model == "ridge":
        return RandomFeatureRidge(features, alphas=(alpha,))
    return RandomFeatureLogisticRegression(features, C=C, random_state=0, solver=solver)


def floor_times(estimator, X, rows, passes, repeats=3):
    """CPU and wall seconds of the unavoidable products on X[:rows], in the fit's blocks.

    Medians over ``repeats`` sweeps of the slice, scaled to all rows and passes.
    """
    import numpy as np

    from favorkern.linear_model import feature_block

    features = estimator.features_
    batch = estimator.resolved_batch_size()
    coef = getattr(estimator, "coef_", None)
    logistic = coef is not None and coef.ndim == 2
    newton = getattr(estimator, "solver", None) == "newton"
    sweeps = []
    for _ in range(repeats):
        sweep = np.zeros(4)  # transform cpu, products cpu, transform wall, products wall
        for start in range(0, rows, batch):
            t0, c0 = time.perf_counter(), time.process_time()
            Z = feature_block(features, X[start : min(rows, start + batch)])
            t1, c1 = time.perf_counter(), time.process_time()
            if newton:  # scores, gradient, and the Hessian: a syrk of [Z, 1] (one class row)
                scores = Z @ coef.T
                Z1 = np.empty((Z.shape[0], Z.shape[1] + 1))
                Z1[:, :-1] = Z
                Z1[:, -1] = 1.0
                scores.T @ Z1
                np.dot(Z1.T, Z1)
            elif logistic:  # the scores, then the gradient product with the residuals
                scores = Z @ coef.T
                Z.T @ scores
            else:  # ridge: the scatter product (syrk)
                np.dot(Z.T, Z)
            t2, c2 = time.perf_counter(), time.process_time()
            sweep += (c1 - c0, c2 - c1, t1 - t0, t2 - t1)
        sweeps.append(sweep)
    median = np.median(sweeps, axis=0) * (X.shape[0] / rows * passes)
    return {
        "floor_rows": rows,
        "floor_repeats": repeats,
        "floor_transform_cpu": float(median[0]),
        "floor_products_cpu": float(median[1]),
        "floor_transform_wall": float(median[2]),
        "floor_products_wall": float(median[3]),
    }


def run(args):
    import tracemalloc

    import numpy as np
    from sklearn.metrics import accuracy_score, r2_score

    from favorkern import __file__ as package_file

    gamma = 1.0 / (2 * D)
    X, y = friedman1(args.n, seed=0)
    X_test, y_test = friedman1(args.n_test, seed=1)
    if args.model == "logistic":
        y, y_test = (y > THRESHOLD).astype(np.int8), (y_test > THRESHOLD).astype(np.int8)
    estimator = make_model(args.model, args.m, gamma, args.alpha, args.C, args.solver)
    gc.collect()
    load_before = os.getloadavg()
    tracemalloc.start()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    with PeakRSS() as rss, Clock() as fit:
        estimator.fit(X, y)
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
    tracemalloc.stop()
    load_after = os.getloadavg()
    prediction = estimator.predict(X_test)
    if args.model == "ridge":
        score, passes = float(r2_score(y_test, prediction)), 1
    else:
        score, passes = float(accuracy_score(y_test, prediction)), int(estimator.n_passes_)
    result = {
        "model": args.model if args.model == "ridge" else f"logistic ({args.solver})",
        "n": args.n,
        "m": args.m,
        "threads": args.threads,
        "fit_wall": fit.wall,
        "fit_cpu": fit.cpu,
        "passes": passes,
        "score": score,
        "input_mb": (X.nbytes + y.nbytes) / 2**20,
        "rss_before_mb": rss.start,
        "rss_peak_above_mb": rss.peak - rss.start,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "load_before": load_before,
        "load_after": load_after,
        "favorkern": package_file,
    }
    if args.model == "logistic":
        result["solver"] = args.solver
        result["n_iter"] = int(estimator.n_iter_[0])
    rows = min(args.n, args.floor_rows)
    result.update(floor_times(estimator, X, rows, passes))
    result["load_end"] = os.getloadavg()
    print(json.dumps(result), flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(result, handle, indent=1)
        os.replace(tmp, args.json)


def summarize(paths):
    print(
        "| model | n | m | threads | fit s wall (CPU) | passes | floor CPU s (transform + "
        "products) | x floor (CPU) | x floor (wall) | MB above input: RSS / tracemalloc "
        "| input MB | score | load |"
    )
    print("|---" * 13 + "|")
    for path in paths:
        with open(path) as handle:
            r = json.load(handle)
        floor_cpu = r["floor_transform_cpu"] + r["floor_products_cpu"]
        floor_wall = r["floor_transform_wall"] + r["floor_products_wall"]
        print(
            f"| {r['model']} | {r['n']:.0e} | {r['m']} | {r['threads']} "
            f"| {r['fit_wall']:.0f} ({r['fit_cpu']:.0f}) | {r['passes']} "
            f"| {floor_cpu:.0f} ({r['floor_transform_cpu']:.0f} + {r['floor_products_cpu']:.0f}) "
            f"| {r['fit_cpu'] / floor_cpu:.2f} | {r['fit_wall'] / floor_wall:.2f} "
            f"| {r['rss_peak_above_mb']:.0f} / {r['tracemalloc_peak_mb']:.0f} "
            f"| {r['input_mb']:.0f} | {r['score']:.4f} "
            f"| {r['load_before'][0]:.1f}-{r['load_after'][0]:.1f} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", choices=["ridge", "logistic"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--solver", choices=["lbfgs", "newton"], default="lbfgs")
    parser.add_argument("--n-test", type=int, default=100_000)
    parser.add_argument("--floor-rows", type=int, default=1 << 18)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the result to this file")
    parser.add_argument("--summarize", nargs="+", metavar="JSON")
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return
    if args.model is None:
        parser.error("give a model (ridge or logistic) or --summarize")
    if "numpy" in sys.modules:
        parser.error("numpy was imported before the thread counts were set")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    run(args)


if __name__ == "__main__":
    main()

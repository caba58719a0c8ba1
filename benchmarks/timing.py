"""Timing helpers shared by the benchmark scripts (a module, not a script).

``round_robin`` times contestants against each other in one run; ``load_checkout``
imports another checkout of favorkern under another name, for before/after figures
in the same run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

BASELINE_PACKAGE = "favorkern_baseline"


def round_robin(fns, repeats):
    """Median seconds of each of ``fns`` (a dict), timed one run of each in turn.

    Each round runs the contestants in a new (seeded) random order: one timed
    right after a contestant that ran BLAS on all threads (whose idle threads keep
    spinning for a while) was measured up to 1.6x slower than the same function
    elsewhere in the round, so no contestant may keep its place or its neighbours.
    """
    for fn in fns.values():
        fn()  # warm-up (compilation, page faults, thread pool)
    names = list(fns)
    times = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def load_checkout(directory):
    """The ``favorkern`` package of the checkout in ``directory``, imported (once) as
    :data:`BASELINE_PACKAGE` beside this checkout's."""
    init = os.path.join(os.path.abspath(directory), "favorkern", "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"--baseline: no favorkern package in {directory!r}")
    if BASELINE_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            BASELINE_PACKAGE, init, submodule_search_locations=[os.path.dirname(init)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[BASELINE_PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[BASELINE_PACKAGE]

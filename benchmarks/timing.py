"""Timing helpers shared by the benchmark scripts (a module, not a script).

``round_robin`` times contestants against each other in one run (wall seconds, or
with ``cpu=True`` CPU seconds of the process); ``load_checkout`` imports another
checkout of favorkern under another name, for before/after figures in the same
run; ``machine_lines`` describes the machine's SIMD level, BLAS kernel and the
elementwise kernels favorkern chose, printed beside every table.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

BASELINE_PACKAGE = "favorkern_baseline"


def round_robin(fns, repeats, cpu=False):
    """Median seconds of each of ``fns`` (a dict), timed one run of each in turn.

    ``cpu``: CPU seconds of the process (``time.process_time``, every thread) instead
    of wall seconds.  Each round runs the contestants in a new (seeded) random order: one timed
    right after a contestant that ran BLAS on all threads (whose idle threads keep
    spinning for a while) was measured up to 1.6x slower than the same function
    elsewhere in the round, so no contestant may keep its place or its neighbours.
    """
    clock = time.process_time if cpu else time.perf_counter
    for fn in fns.values():
        fn()  # warm-up (compilation, page faults, thread pool, kernel choice)
    names = list(fns)
    times = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(names):
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def machine_lines():
    """Lines naming the SIMD level (numpy's CPU features, as ``np.show_runtime``
    reports them), OpenBLAS's core and threads, the elementwise kernels favorkern
    chose in this process, the thread settings and the load."""
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__
        from numpy.core._multiarray_umath import __cpu_features__ as features
    found = [f for f in __cpu_dispatch__ if features.get(f)]
    missing = [f for f in __cpu_dispatch__ if not features.get(f)]
    lines = [
        f"numpy {np.__version__} SIMD: baseline {' '.join(__cpu_baseline__)}, "
        f"found {' '.join(found) or '-'}, not found {' '.join(missing) or '-'}"
    ]
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info["user_api"] == "blas":
                lines.append(
                    f"BLAS: {info['internal_api']} {info.get('version')} core "
                    f"{info.get('architecture')}, {info['num_threads']} threads"
                )
    except ImportError:
        lines.append("BLAS: threadpoolctl not installed")
    from favorkern._elementwise import chosen_kernels

    chosen = chosen_kernels()
    lines.append(
        "elementwise kernels chosen: "
        + (", ".join(f"{k}: {v}" for k, v in chosen.items()) or "none yet")
    )
    names = ("FAVORKERN_NUM_THREADS", "FAVORKERN_EXP", "FAVORKERN_SINCOS", "OPENBLAS_NUM_THREADS")
    settings = " ".join(f"{n}={os.environ[n]}" for n in names if n in os.environ)
    lines.append(f"cores {os.cpu_count()}; {settings or 'no thread or kernel settings'}")
    lines.append(f"load average (1, 5, 15 min): {os.getloadavg()}")
    return lines


def print_machine():
    """Print :func:`machine_lines`."""
    for line in machine_lines():
        print(line)


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

"""favorkern's worker threads and its process-wide BLAS thread limit.

The feature maps and attention split their work over row blocks run by a thread
pool of their own, with BLAS pinned to one thread meanwhile (BLAS threads next to
ours, or on a busy machine, were measured up to 10x slower).  This module holds
the three pieces of process-wide state that this needs, and keeps them safe:

* the pools (one per worker count, created on first use) are dropped in a child
  process after ``fork``, whose copies would have no threads behind them (a call
  in the child would wait forever); the child creates its own on first use;
* the BLAS limit is reference-counted: the first caller saves the limits and sets
  one thread, the last one restores the saved limits, so concurrent calls from
  several user threads never leave BLAS at one thread (a per-call
  ``threadpool_limits`` context, exited in another order than entered, can);
* ``FAVORKERN_NUM_THREADS`` is validated and capped at the number of CPUs.

A call that is left before its work is done (Ctrl-C in the waiting thread, or an
error in one of its blocks) cancels the rest: :func:`run_tasks` and
:func:`run_row_blocks` give each call a cancellation flag, checked by the workers
before every block (and by long loops inside a block, :func:`check_cancelled`), so
the pool drops the queued blocks of an abandoned call instead of running them
before the next call (or before the interpreter exits: it joins the pool threads).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import _config

__all__ = [
    "n_threads",
    "executor",
    "blas_single_thread",
    "run_row_blocks",
    "run_tasks",
    "check_cancelled",
    "CancelledCall",
]


ENV_THREADS = "FAVORKERN_NUM_THREADS"

# One lock guards the pools and the BLAS limit; it is held only for bookkeeping,
# never while work runs, so the fork handlers below can take it.
_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_controller = None  # threadpoolctl.ThreadpoolController, created on first use
_controller_modules = -1  # len(sys.modules) when it was created
_blas_users = 0  # callers currently inside blas_single_thread()
_blas_libs: list = []  # the controller's BLAS libraries
_blas_saved = None  # (library, threads) pairs to restore


def n_threads() -> int:
    """Worker threads for feature maps and attention.

    ``FAVORKERN_NUM_THREADS`` when set (an integer >= 1, capped at the number of
    CPUs with a ``RuntimeWarning``), else the number of CPUs.

    Raises
    ------
    ValueError
        If ``FAVORKERN_NUM_THREADS`` is set to anything but an integer >= 1.

    Examples
    --------
    >>> from favorkern._parallel import n_threads
    >>> n_threads() >= 1
    True
    """
    cores = _cpu_count()
    text = os.environ.get(ENV_THREADS, "").strip()
    if not text:
        return cores
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(
            f"environment variable {ENV_THREADS} must be an integer >= 1 (number of "
            f"worker threads), got {shown!r}"
        )
    if value > cores:
        warnings.warn(
            f"{ENV_THREADS}={value} exceeds the {cores} CPUs of this machine; using {cores} "
            "threads",
            RuntimeWarning,
            stacklevel=2,
        )
        return cores
    return value


_cores = None


def _cpu_count() -> int:
    """``os.cpu_count()`` (at least 1), read once: it reads /sys on every call (5 us)."""
    global _cores
    if _cores is None:
        _cores = max(1, os.cpu_count() or 1)
    return _cores


def executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers`` threads (created on first use, per process)."""
    with _lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="favorkern")
            _pools[workers] = pool
        return pool


def _as_blas_controller(change, *args, **kwargs):
    """Call ``change`` (which sets OpenBLAS limits) as threadpoolctl's controlling thread.

    threadpoolctl >= 3.8 lets only one "controlling" thread set the limits of a
    pthreads OpenBLAS (the first to try, until it leaves a ``threadpool_limits``
    block); from any other thread the call silently does nothing, which would
    leave the limit set by one thread unrestored by another.  Take control for the
    call and hand it back.
    """
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    try:
        return change(*args, **kwargs)
    finally:
        if clear is not None:
            clear()


def _acquire_blas_limit() -> None:
    global _controller, _controller_modules, _blas_libs, _blas_users, _blas_saved
    with _lock:
        if _blas_users == 0:
            # The controller knows the libraries loaded when it was made (0.4 ms to
            # make); a BLAS loaded since came with an import, so rebuild after imports.
            if _controller is None or _controller_modules != len(sys.modules):
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
                _controller_modules = len(sys.modules)
                _blas_libs = [lib for lib in _controller.lib_controllers if lib.user_api == "blas"]
            # Record and set each library's count directly (threadpoolctl's limiter
            # also reads every library's full info: measured 13 us per enter and exit
            # against 10, and 12 against 2 where BLAS is at one thread already).
            saved = []
            for lib in _blas_libs:
                threads = lib.num_threads
                if threads is not None and threads != 1:
                    _as_blas_controller(lib.set_num_threads, 1)
                    saved.append((lib, threads))
            _blas_saved = saved
        _blas_users += 1


def _restore(saved) -> None:
    for lib, threads in saved:
        _as_blas_controller(lib.set_num_threads, threads)


def _release_blas_limit() -> None:
    global _blas_users, _blas_saved
    with _lock:
        _blas_users -= 1
        if _blas_users == 0 and _blas_saved is not None:
            saved, _blas_saved = _blas_saved, None
            _restore(saved)


@contextmanager
def blas_single_thread():
    """Context manager pinning BLAS to one thread, safe to enter from many threads.

    Process-wide (BLAS has one setting per process): while any caller is inside,
    BLAS runs on one thread; when the last one leaves, the limits in force when the
    first one entered are restored exactly.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> from favorkern._parallel import blas_single_thread
    >>> before = [lib["num_threads"] for lib in threadpool_info()]
    >>> with blas_single_thread():
    ...     pass
    >>> [lib["num_threads"] for lib in threadpool_info()] == before
    True
    """
    _acquire_blas_limit()
    try:
        yield
    finally:
        _release_blas_limit()


class CancelledCall(Exception):
    """Raised inside a pool worker whose call was cancelled (never reaches the caller:
    the caller left with its own exception)."""


class _Flag:
    """The cancellation flag of one call; a call made inside another's block is
    cancelled with it."""

    __slots__ = ("parent", "set")

    def __init__(self, parent):
        self.parent = parent
        self.set = False

    def is_set(self) -> bool:
        flag = self
        while flag is not None:
            if flag.set:
                return True
            flag = flag.parent
        return False


_current = threading.local()  # the flag of the call whose block this thread runs


def check_cancelled() -> None:
    """Raise :class:`CancelledCall` in a worker whose call was cancelled.

    Cheap (an attribute read); long loops inside one block (a whole head of causal
    attention) call it once per chunk so that an abandoned call stops within a chunk.
    A no-op outside the pool's workers.
    """
    flag = getattr(_current, "flag", None)
    if flag is not None and flag.is_set():
        raise CancelledCall


def _run_shares(share, n_shares: int) -> list:
    """``[share(w) for w in range(n_shares)]`` on the pool, cancelled if the caller leaves.

    ``share(w)`` runs its blocks one after the other, calling :func:`check_cancelled`
    before each.  When the waiting thread is interrupted (``KeyboardInterrupt``) or a
    share raises, the flag is set: the shares still queued never start and the running
    ones stop at their next block; the exception propagates at once.
    """
    flag = _Flag(getattr(_current, "flag", None))

    def run(w):
        previous = getattr(_current, "flag", None)
        _current.flag = flag
        try:
            if flag.is_set():
                raise CancelledCall
            return share(w)
        finally:
            _current.flag = previous

    pool = executor(n_threads())
    futures = []
    try:
        for w in range(n_shares):
            futures.append(pool.submit(run, w))
        return [future.result() for future in futures]
    except BaseException:
        flag.set = True
        for future in futures:
            future.cancel()
        raise


def run_tasks(tasks, workers) -> list:
    """Results of the callables ``tasks``, interleaved over ``workers`` pool threads.

    The calling thread only waits (running a share on it measured 10-25% slower,
    bidirectional attention, L = 2^10 ... 2^15, d = 64, 2 threads).  The queued tasks
    of a call that is left (Ctrl-C, an error in a task) are dropped.

    Examples
    --------
    >>> from favorkern._parallel import run_tasks
    >>> run_tasks([lambda i=i: i * i for i in range(5)], 2)
    [0, 1, 4, 9, 16]
    """
    if workers <= 1 or len(tasks) <= 1:
        results = []
        for task in tasks:
            check_cancelled()
            results.append(task())
        return results
    workers = min(workers, len(tasks))

    def share(w):
        done = []
        for i in range(w, len(tasks), workers):
            check_cancelled()
            done.append((i, tasks[i]()))
        return done

    results = [None] * len(tasks)
    for done in _run_shares(share, workers):
        for i, value in done:
            results[i] = value
    return results


def run_row_blocks(n_rows: int, row_cost: int, itemsize: int, block_fn, rows_per_block=None):
    """Call ``block_fn(start, stop)`` over row blocks, in parallel when it pays.

    ``row_cost`` is the number of output elements per row (sets the block size, unless
    ``rows_per_block`` is given).  The blocks of a call that is left are dropped.
    """
    if rows_per_block is None:
        rows_per_block = max(16, _config.TRANSFORM_BLOCK_BYTES // max(1, row_cost * itemsize))
    workers = n_threads()
    if workers == 1 or n_rows * row_cost < _config.TRANSFORM_PARALLEL_MIN_ELEMENTS:
        for start in range(0, n_rows, rows_per_block):
            check_cancelled()
            block_fn(start, min(n_rows, start + rows_per_block))
        return
    # One contiguous range of blocks per worker: interleaved blocks of a fresh output
    # share its (huge) pages between the threads, whose first-touch faults then
    # contend (measured 1.6x slower for a float32 product into a fresh 200 MB array).
    bounds = [(s, min(n_rows, s + rows_per_block)) for s in range(0, n_rows, rows_per_block)]
    edges = [len(bounds) * w // workers for w in range(workers + 1)]

    def work(worker):
        for start, stop in bounds[edges[worker] : edges[worker + 1]]:
            check_cancelled()
            block_fn(start, stop)

    with blas_single_thread():
        _run_shares(work, workers)


# -- fork -------------------------------------------------------------------------
# The lock is taken around fork so that the child never inherits it held, nor the
# state half-updated.


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _pools, _blas_users, _blas_saved
    _lock = threading.Lock()
    # The pools' threads do not exist in the child.
    _pools = {}
    saved, _blas_saved = _blas_saved, None
    _blas_users = 0
    if saved is not None:
        # A parent thread was inside blas_single_thread(); no call is running in
        # the child, so it gets the limits the parent had before.
        try:
            _restore(saved)
        except Exception:  # noqa: BLE001  (never break a fork over a thread count)
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )

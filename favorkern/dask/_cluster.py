"""Worker environment, local clusters, input checks and the tree reduction shared by
the dask graphs."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

#: Environment for dask worker processes: one numba thread and one favorkern
#: feature-map thread per process (dask runs one task per worker thread, and the
#: nanny pins BLAS/OpenMP but not numba or favorkern's own pool).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "FAVORKERN_NUM_THREADS": "1"}


def local_cluster(n_workers=2, threads_per_worker=1, **kwargs):
    """A ``distributed.LocalCluster`` of processes started with :data:`WORKER_ENV`.

    Parameters
    ----------
    n_workers : int, default=2
        Number of worker processes.
    threads_per_worker : int, default=1
        Threads per worker (tasks run concurrently in a worker).
    **kwargs
        Passed to ``distributed.LocalCluster`` (e.g. ``memory_limit``,
        ``dashboard_address``); ``env`` entries are added to :data:`WORKER_ENV`.

    Returns
    -------
    cluster : distributed.LocalCluster
        Close it (or use it as a context manager) when done.

    Examples
    --------
    >>> from distributed import Client
    >>> from favorkern.dask import local_cluster
    >>> with local_cluster(n_workers=1, dashboard_address=None) as cluster:  # doctest: +SKIP
    ...     with Client(cluster) as client:
    ...         print(client.run(lambda: __import__("os").environ["NUMBA_NUM_THREADS"]))
    """
    from distributed import LocalCluster

    env = {**WORKER_ENV, **kwargs.pop("env", {})}
    kwargs.setdefault("processes", True)
    return LocalCluster(
        n_workers=n_workers, threads_per_worker=threads_per_worker, env=env, **kwargs
    )


# -- input checks -----------------------------------------------------------------


def as_dask(X, name, *, row_chunks="auto"):
    """``X`` as a dask array of float32 (if float32) or float64, checked for dtype."""
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        chunks = (row_chunks,) * max(0, X.ndim - 1) + (-1,) if X.ndim else ()
        X = da.from_array(X, chunks=chunks)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {X.dtype}")
    if any(math.isnan(s) for s in X.shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {X.shape}); call {name}.compute_chunk_sizes()"
        )
    if 0 in X.shape:
        raise ValueError(f"{name} is empty (shape {X.shape}); at least one value is required")
    return X


def check_last_axis(X, name):
    if X.numblocks[-1] != 1:
        raise ValueError(
            f"{name} must not be chunked along its last axis (features), got chunks "
            f"{X.chunks[-1]}; chunk along rows only, e.g. {name}.rechunk({{-1: -1}})"
        )


def checked_block(block, name):
    """A C-contiguous block; non-finite values raise as the in-memory checks do."""
    block = np.ascontiguousarray(block)
    if not np.isfinite(block).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return block


def tree_reduce(parts, combine, fan_in):
    """Reduce ``parts`` to one by ``combine(*group)`` over groups of ``fan_in``.

    ``combine`` builds the task (a graph key or a ``dask.delayed``) that combines a
    group; each level of the tree is a hop between workers, so the fan-in trades
    the depth ``log_fan_in(len(parts))`` against the work of one combination.
    """
    while len(parts) > 1:
        parts = [combine(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]

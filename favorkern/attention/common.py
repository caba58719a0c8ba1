"""Scheduling helpers of the attention algorithms: heads, ranges, threads, normalization."""

from __future__ import annotations

import numpy as np

from .. import _config
from .._parallel import run_tasks

__all__ = [
    "head",
    "heads",
    "run_parallel",
    "split",
    "normalize",
    "feature_chunk_rows",
    "exact_is_faster",
]


# Exact attention costs ~ Lq Lk (d + dv) products and Lq Lk exps, FAVOR ~ (Lq + Lk) m
# (d + dv) and (Lq + Lk) m exps: the same per-element mix, so their ratio is
# Lq Lk / ((Lq + Lk) m) times a constant, measured with bench_attention.py's
# crossover table (d = 64, m = 256, float32, 2 threads): exact is faster up to about
# L = 2 * EXACT_ATTENTION_CROSSOVER * m for Lq = Lk.  Re-measured with base-2 features
# and value weighted key states: exact / favor 0.66 at L = 512 and 1.17 at 768 (one
# thread, CPU time: 0.92 and 1.38; load 3.5), a crossover near L = 680 and 560, so the
# rule's L = 666 stands.
def exact_is_faster(n_queries, n_keys, n_out) -> bool:
    """True where exact softmax attention is measured faster than FAVOR with ``n_out``
    features: ``Lq Lk <= EXACT_ATTENTION_CROSSOVER * n_out * (Lq + Lk)``."""
    crossover = _config.EXACT_ATTENTION_CROSSOVER
    return n_queries * n_keys <= crossover * n_out * (n_queries + n_keys)


def feature_chunk_rows(n_out, dtype) -> int:
    """Rows per feature buffer of ``n_out`` columns (about ``ATTENTION_CHUNK_BYTES``)."""
    return max(16, _config.ATTENTION_CHUNK_BYTES // (n_out * np.dtype(dtype).itemsize))


def head(X, index, n_trailing):
    """The 2-D (or 1-D for masks) slice of ``X`` for one broadcast batch index."""
    if X is None:
        return None
    lead = X.shape[: X.ndim - n_trailing]
    offset = len(index) - len(lead)
    return X[tuple(0 if size == 1 else index[offset + k] for k, size in enumerate(lead))]


def heads(Q, K, V, mask, batch):
    """One (q, k, v, mask, out_index) tuple per (batch, head)."""
    batch = tuple(batch)
    indices = list(np.ndindex(*batch))
    columns = [_head_slices(X, n, batch, indices) for X, n in ((Q, 2), (K, 2), (V, 2), (mask, 1))]
    return list(zip(*columns, indices, strict=True))


def _head_slices(X, n_trailing, batch, indices):
    """``head(X, idx, n_trailing)`` for every index: an array whose leading dimensions
    are ``batch`` itself is split by one reshape (a view), not one lookup per head."""
    if X is None:
        return [None] * len(indices)
    if X.shape[: X.ndim - n_trailing] == batch and X.flags.c_contiguous:
        return list(X.reshape((len(indices),) + X.shape[X.ndim - n_trailing :]))
    return [head(X, idx, n_trailing) for idx in indices]


def run_parallel(tasks, workers):
    """Run the callables ``tasks``, interleaved over ``workers`` pool threads.

    :func:`favorkern._parallel.run_tasks`: the calling thread only waits, and the
    queued tasks of a call that is left (Ctrl-C, an error) are dropped.
    """
    return run_tasks(tasks, workers)


def split(n, parts):
    """``parts`` contiguous (start, stop) ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    edges = [n * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts)]


def normalize(numerator, denominator):
    """``numerator / denominator`` in place; rows with a zero denominator become 0.

    The guard: no epsilon is added anywhere.  A denominator of exactly 0 (every key
    masked, or every feature product underflowed) gives a zero output row.  In
    float32 so does a subnormal one (the feature products underflowed all but a few
    bits): such rows are lost like zero rows, and the float64 fallback of the plan
    (:func:`~favorkern.attention.plan.fill_lost_rows`) computes them again.
    """
    if denominator.dtype == np.float32:
        denominator[np.abs(denominator) < _FLOAT32_TINY] = np.inf
    else:
        denominator[denominator == 0] = np.inf
    numerator /= denominator[:, np.newaxis]


_FLOAT32_TINY = float(np.finfo(np.float32).tiny)

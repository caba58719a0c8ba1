"""Scheduling helpers of the attention algorithms: heads, ranges, threads, normalization."""

from __future__ import annotations

import numpy as np

from .. import _config
from .._parallel import executor, n_threads

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

    The calling thread only waits: running the first share on it instead measured
    10-25% slower (bidirectional attention, L = 2^10 ... 2^15, d = 64, 2 threads).
    """
    if workers <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    workers = min(workers, len(tasks))

    def work(w):
        return [(i, tasks[i]()) for i in range(w, len(tasks), workers)]

    pool = executor(n_threads())
    results = [None] * len(tasks)
    for future in [pool.submit(work, w) for w in range(workers)]:
        for i, value in future.result():
            results[i] = value
    return results


def split(n, parts):
    """``parts`` contiguous (start, stop) ranges covering ``range(n)``."""
    parts = max(1, min(parts, n))
    edges = [n * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts)]


def normalize(numerator, denominator):
    """``numerator / denominator`` in place; rows with a zero denominator become 0.

    The guard: no epsilon is added anywhere.  A denominator of exactly 0 (every key
    masked, or every feature product underflowed) gives a zero output row.
    """
    denominator[denominator == 0] = np.inf
    numerator /= denominator[:, np.newaxis]

"""Causal linear attention: chunked matrix products or a numba recurrence.

Both carry one :class:`~.state.KeyState` through the sequence.  The key stabilizer
of output ``i`` is the running maximum over keys ``0..i`` only, so no output
depends on a later token, not even through rounding or underflow.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .._parallel import executor, n_threads
from .bidirectional import accumulate_keys
from .common import normalize, run_parallel, split
from .features import Buffers, masked_row_log
from .state import KeyState, exclusive_scan

__all__ = ["causal", "causal_chunked", "causal_key_features", "CAUSAL_CHUNK_ROWS"]

# The recurrent kernel amortizes one thread-pool round trip per chunk.
_RECURRENT_CHUNK_BYTES = 1 << 21


def causal_key_features(fmap, k, mask, start, stop, buf, carried):
    """Causally stabilized key features of rows ``start:stop`` into ``buf``.

    Key ``j`` is divided by ``exp(c_j)`` with ``c_j`` the running maximum over keys
    ``0..j`` (``carried`` is that maximum before ``start``).  Returns ``c`` (float64,
    ``-inf`` while every key so far is masked).
    """
    row_log, shift, masked = masked_row_log(fmap, k, mask, start, stop, buf)
    const = np.maximum.accumulate(row_log)
    np.maximum(const, carried, out=const)
    finite = np.where(const > -np.inf, const, 0.0)
    fmap.key_finish(buf, row_log, shift, finite)
    if masked is not None:
        buf[masked] = 0.0
    return const


def causal_chunked(fmap, q, k, v, mask, out, chunk, start=0, stop=None, initial=None) -> KeyState:
    """Causal attention of rows ``start:stop`` of one head by chunked matrix products.

    ``out_c = (phi(Qc) S + tril(phi(Qc) phi(Kc)^T) Vc) / (phi(Qc) z + tril(...) 1)``,
    every term rescaled to the running key maximum of its own query row; then the
    chunk's keys enter the state.  ``initial`` is the :class:`~.state.KeyState` of
    the rows before ``start`` (an empty state if None; it is not modified).
    Returns the state after row ``stop - 1``.
    """
    dtype = fmap.dtype
    n = q.shape[0] if stop is None else stop
    if initial is None:
        state = KeyState.empty(fmap.n_out, v.shape[1], dtype)
    else:
        state = initial.astype(dtype).copy()
        state.c = float(state.c)
    buffers = Buffers(fmap)
    scores_buf = np.empty((chunk, chunk), dtype=dtype)
    lower = np.tril(np.ones((chunk, chunk), dtype=dtype))
    for a in range(start, n, chunk):
        b = min(n, a + chunk)
        size = b - a
        qf, kf = buffers(size, 0), buffers(size, 1)
        fmap.queries(q[a:b], qf)
        carried = state.c
        const = causal_key_features(fmap, k, mask, a, b, kf, carried)
        finite = np.where(const > -np.inf, const, 0.0)
        varying = const[0] != const[-1]
        scores = scores_buf[:size, :size]
        np.matmul(qf, kf.T, out=scores)
        scores *= lower[:size, :size]
        if varying:
            # key j < i was stabilized by c_j <= c_i: bring it to row i's constant
            scores *= np.exp(np.minimum(finite[np.newaxis, :] - finite[:, np.newaxis], 0.0)).astype(
                dtype
            )
        block = out[a:b]
        np.matmul(scores, v[a:b], out=block)
        denominator = scores @ buffers.ones(size)
        if carried > -np.inf:
            past, past_norm = qf @ state.S, qf @ state.z
            if carried != const[-1]:
                carry = np.exp(carried - finite).astype(dtype)
                past *= carry[:, np.newaxis]
                past_norm *= carry
            block += past
            denominator += past_norm
        normalize(block, denominator)
        new_const = float(const[-1])
        if new_const > -np.inf:
            state.rescale(new_const)
            if varying:
                kf *= np.exp(np.minimum(finite - new_const, 0.0)).astype(dtype)[:, np.newaxis]
            state.add(kf, v[a:b], buffers.ones(size))
    return state


def _recurrent_features(fmap, q, k, mask, a, b, query_buf, key_buf, carried, queries=True):
    """Features of one chunk for the recurrent kernel, and the per-token decay."""
    size = b - a
    qf, kf = query_buf[:size], key_buf[:size]
    if queries:
        fmap.queries(q[a:b], qf)
    const = causal_key_features(fmap, k, mask, a, b, kf, carried)
    previous = np.concatenate(([carried], const[:-1]))
    with np.errstate(invalid="ignore"):
        decay = np.exp(previous - const)
    decay[np.isnan(decay)] = 1.0  # no key yet: the state is zero, any factor will do
    return qf, kf, decay, float(const[-1])


def _causal_recurrent(fmap, q, k, v, mask, out, chunk, column_blocks, workers):
    """Causal attention of one head by the numba recurrence, columns split in blocks."""
    from .._numba.attention import causal_recurrence

    dtype = fmap.dtype
    n, dv = v.shape
    columns = split(dv, column_blocks)
    states = [np.zeros((fmap.n_out, c1 - c0), dtype=dtype) for c0, c1 in columns]
    normalizers = [np.zeros(fmap.n_out, dtype=dtype) for _ in columns]
    query_buf = fmap.empty(chunk, rows=True)
    key_buf = fmap.empty(chunk, rows=True)
    value_buf = np.empty((chunk, dv), dtype=dtype)
    carried = -np.inf
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        if workers > 1:
            # queries on one thread while the keys are mapped on another
            query_task = executor(n_threads()).submit(fmap.queries, q[a:b], query_buf[: b - a])
            qf, kf, decay, carried = _recurrent_features(
                fmap, q, k, mask, a, b, query_buf, key_buf, carried, queries=False
            )
            query_task.result()
        else:
            qf, kf, decay, carried = _recurrent_features(
                fmap, q, k, mask, a, b, query_buf, key_buf, carried
            )
        values = value_buf[: b - a]
        values[...] = v[a:b]
        block = out[a:b]
        run_parallel(
            [
                partial(
                    causal_recurrence,
                    qf,
                    kf,
                    values,
                    decay,
                    states[i],
                    normalizers[i],
                    block,
                    c0,
                    c1,
                )
                for i, (c0, c1) in enumerate(columns)
            ],
            workers,
        )


# Measured with benchmarks/bench_attention.py --methods (d = 64, m = 256, float32,
# 2 threads): the two algorithms are within noise of each other for one head and the
# chunked products never lose by much, need no compilation and run whole heads on one
# thread each, so method="favor" always takes "chunked".  Chunks of 256 rows measured
# faster than 64, 128 and 512 (one thread, L = 65536).
CAUSAL_CHUNK_ROWS = 256


def _causal_scan(fmap, q, k, v, mask, out, chunk, workers):
    """Causal attention of one head split over ``workers`` contiguous ranges.

    Phase 1 computes the key state of each range but the last, in parallel; an
    exclusive prefix merge gives each range the state of all earlier keys (its
    constant is their maximum: no future key enters); phase 2 runs the ranges in
    parallel from those states.
    """
    ranges = split(q.shape[0], workers)
    parts = run_parallel(
        [partial(accumulate_keys, fmap, k, v, mask, a, b, chunk) for a, b in ranges[:-1]],
        workers,
    )
    initials = exclusive_scan(parts, fmap.dtype)
    run_parallel(
        [
            partial(causal_chunked, fmap, q, k, v, mask, out, chunk, a, b, initial)
            for (a, b), initial in zip(ranges, initials, strict=True)
        ],
        workers,
    )


def causal(fmap, heads, out, workers, method) -> None:
    """Causal attention of every (batch, head) of ``heads`` into ``out``.

    ``method="chunked"`` (and ``"auto"``): whole heads per thread when there are at
    least as many heads as workers, else each head split into one range per thread
    (:func:`_causal_scan`); ``"recurrent"``: the numba recurrence.
    """
    if method == "auto":
        method = "chunked"
    if method == "chunked":
        chunk = CAUSAL_CHUNK_ROWS
        if len(heads) >= workers:
            run_parallel(
                [
                    partial(causal_chunked, fmap, q, k, v, m, out[idx], chunk)
                    for q, k, v, m, idx in heads
                ],
                workers,
            )
        else:
            for q, k, v, m, idx in heads:
                _causal_scan(fmap, q, k, v, m, out[idx], chunk, workers)
        return
    chunk = max(64, _RECURRENT_CHUNK_BYTES // (fmap.n_out * fmap.dtype.itemsize))
    if len(heads) >= workers:
        run_parallel(
            [
                partial(_causal_recurrent, fmap, q, k, v, m, out[idx], chunk, 1, 1)
                for q, k, v, m, idx in heads
            ],
            workers,
        )
        return
    for q, k, v, m, idx in heads:
        blocks = max(1, min(workers, v.shape[1]))
        _causal_recurrent(fmap, q, k, v, m, out[idx], chunk, blocks, workers)

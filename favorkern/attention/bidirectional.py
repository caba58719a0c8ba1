"""Bidirectional linear attention: accumulate the key state, then emit the queries.

Pass 1 streams over key chunks and accumulates the :class:`~.state.KeyState`
``S = phi(K)^T V``, ``z = phi(K)^T 1`` with an online key stabilizer (the state is
rescaled when the running maximum grows, as flash attention does); pass 2 emits
``phi(Q) S / phi(Q) z`` chunk by chunk.  Memory O(chunk x m + m x dv) per worker.

``phi`` is the :class:`~.features.AttentionFeatures` of the call (the feature
function of the paper's ``phi(Q)``, ``phi(K)``), ``m`` its width.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .._parallel import check_cancelled
from .common import run_parallel, split
from .features import _KEY_WINDOW, Buffers
from .state import KeyState, merge

__all__ = ["accumulate_keys", "emit", "bidirectional", "divide_by_last_column"]


def accumulate_keys(phi, k, v, mask, start, stop, chunk, buffers=None, lost=None) -> KeyState:
    """The key state of keys ``start:stop`` of one head, with an online maximum ``c``.

    ``S`` is kept in the features' dtype and ``z`` in float64 (it sums positive
    terms over all keys).  ``buffers``: a :class:`~.features.Buffers` to reuse.
    ``lost``: a list; ``True`` is appended where the dtype's exponent range may have
    lost a key (an exp feature of 0, or keys spread over more than the range), for a
    caller that then computes the state again in float64.

    Each key's stabilizer ``exp(scale_log_j - c)`` (:meth:`~.features.
    AttentionFeatures.key_parts`) weights its value row: ``S += phi^T (w v)``,
    ``z += phi^T w``.
    """
    dtype = phi.dtype
    state = KeyState(
        np.zeros((phi.n_out, v.shape[1]), dtype=dtype),
        np.zeros(phi.n_out, dtype=np.float64),
        -np.inf,
    )
    if buffers is None:
        buffers = Buffers(phi)
    lowest = np.inf  # the smallest key log-scale, for ``lost``
    for a in range(start, stop, chunk):
        check_cancelled()
        b = min(stop, a + chunk)
        features = buffers(b - a)
        row_log, scale_log = phi.key_parts(k[a:b], features)
        masked = None if mask is None else mask[a:b]
        if masked is not None and masked.any():
            row_log[masked] = -np.inf
        else:
            masked = None
        chunk_max = float(row_log.max())
        if chunk_max == -np.inf:
            continue  # every key of the chunk is masked
        if lost is not None:
            lowest = min(lowest, _check_lost(phi, features, row_log, masked, lost))
        if chunk_max > state.c:
            state.rescale(chunk_max)
        scale_log -= state.c
        if scale_log is not row_log:
            _leave_window_near_underflow(features, row_log, scale_log, state.c, masked, dtype)
        dv = v.shape[1]
        # [w v, w]: z = (K')^T 1_L comes out of the product for S as its last column
        # (a pass of its own over the features otherwise)
        values = buffers.values(b - a, dv + 1)
        weight = values[:, dv]
        np.exp(scale_log, out=weight, casting="same_kind")
        if masked is not None:
            weight[masked] = 0.0
            features[masked] = 0.0  # a masked key's features may be inf or NaN
        np.multiply(v[a:b], weight[:, np.newaxis], out=values[:, :dv])
        product = buffers.array((phi.n_out, dv + 1), "state")
        # S = (K')^T V and z = (K')^T 1_L of Performer eq. 4, summed over key chunks
        np.matmul(features.T, values, out=product)
        state.S += product[:, :dv]
        state.z += product[:, dv]
    if lost is not None and state.c - lowest > _range(dtype):
        lost.append(True)
    return state


def _check_lost(phi, features, row_log, masked, lost) -> float:
    """Append ``True`` to ``lost`` where an unmasked exp feature is 0 (exp features are
    positive: a 0 underflowed); return the smallest unmasked ``row_log``."""
    seen = row_log if masked is None else row_log[~masked]
    if phi.kind == "exp" and not (features if masked is None else features[~masked]).all():
        lost.append(True)
    return float(seen.min())


def _range(dtype) -> float:
    """Natural logs between 1 and the dtype's smallest normal number, less a margin for
    the features' own spread below their row maximum."""
    return -float(np.log(np.finfo(dtype).tiny)) - 8.0


def emit(phi, q, state: KeyState, out, start, stop, chunk, buffers=None) -> None:
    """Pass 2: ``out = phi(Q) S / phi(Q) z`` for query rows ``start:stop``.

    ``buffers``: a :class:`~.features.Buffers` to reuse.
    """
    if buffers is None:
        buffers = Buffers(phi)
    S, z = state.S, state.z
    window = phi.query_window(S, z) if phi.kind == "exp" else None
    dv = S.shape[1]
    numba = phi.kind == "exp" and phi.kernel.numba
    # [S z]: the normalizer q_i'^T z comes out of the numerator's product
    Sz = np.empty((phi.n_out, dv + 1), dtype=phi.dtype)
    Sz[:, :dv] = S
    Sz[:, dv] = z
    for a in range(start, stop, chunk):
        check_cancelled()
        b = min(stop, a + chunk)
        features = buffers(b - a)
        # per chunk: the rows are read into cache for the product right after
        phi.queries(q[a:b], features, window, phi.logits_inside(q[a:b], window))
        block = buffers.values(b - a, dv + 1)
        np.matmul(features, Sz, out=block)  # Q' ((K')^T V) and D, eq. 4
        divide_by_last_column(block, dv, out[a:b], numba)  # D^-1


def divide_by_last_column(block, dv, out, numba=False) -> None:
    """``out = block[:, :dv] / block[:, dv]`` where rows with a zero denominator become 0,
    as :func:`~.common.normalize` does (in float32 also a subnormal one).

    ``numba``: by the numba loop (numba is loaded), 5x faster than numpy's broadcast
    over rows of 64: one reciprocal per row and a multiplication (one rounding more than
    a division) where the denominator is normal.
    """
    if numba and out.flags.c_contiguous:
        from .._numba.attention import divide_rows

        info = np.finfo(out.dtype)
        # float64: only a zero denominator is lost (none is below the smallest subnormal)
        zero_below = _FLOAT32_TINY if out.dtype == np.float32 else float(info.smallest_subnormal)
        divide_rows(block, dv, zero_below, float(info.tiny), out)
        return
    den = block[:, dv].copy()
    if den.dtype == np.float32:
        den[np.abs(den) < _FLOAT32_TINY] = np.inf
    else:
        den[den == 0] = np.inf
    np.divide(block[:, :dv], den[:, np.newaxis], out=out)


_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _leave_window_near_underflow(features, row_log, scale_log, const, masked, dtype):
    """Keys of the window shortcut (features ``exp(u)``, ``u <= 16``, the rest in their
    weight) whose weights come near the smallest normal float: those rows are divided
    by their maxima instead and their weights set to ``exp(row_log - c)``, in place.

    Their weights would lose bits (a key 71-87 natural logs below the largest one of
    another chunk, in float32), and with them the outputs of queries that attend
    mostly to those keys.
    """
    floor = float(np.log(np.finfo(dtype).tiny)) + _WEIGHT_MARGIN
    low = scale_log < floor
    if masked is not None:
        low &= ~masked
    if not low.any():
        return
    rows = np.flatnonzero(low)
    lead = row_log[rows] - const - scale_log[rows]  # each row's largest u (natural)
    features[rows] *= np.exp(-lead).astype(dtype)[:, np.newaxis]
    scale_log[rows] = row_log[rows] - const


# Weights within this many natural logs of the smallest normal float leave the window
# shortcut: the window's span plus a float32 mantissa's 17.
_WEIGHT_MARGIN = _KEY_WINDOW + 17.0


def _heads_task(phi, heads, out, chunk):
    """Whole heads one after the other, on one feature buffer."""
    buffers = Buffers(phi)
    for q, k, v, m, idx in heads:
        state = accumulate_keys(phi, k, v, m, 0, k.shape[0], chunk, buffers)
        # one state: no merge, only z to the features' dtype
        emit(phi, q, state.astype(phi.dtype), out[idx], 0, q.shape[0], chunk, buffers)


def bidirectional(phi, heads, out, chunk, workers) -> None:
    """Bidirectional attention of every (batch, head) of ``heads`` into ``out``.

    With at least one head per worker each thread runs whole heads (one task per
    thread, interleaved heads); otherwise the keys of a head are split over the
    threads and their states merged.
    """
    if len(heads) >= workers:
        shares = [heads[w::workers] for w in range(workers)]
        run_parallel([partial(_heads_task, phi, share, out, chunk) for share in shares], workers)
        return
    # one feature buffer per share, reused by its keys and then its queries
    buffers = [Buffers(phi) for _ in range(workers)]
    for q, k, v, m, idx in heads:
        parts = run_parallel(
            [
                partial(accumulate_keys, phi, k, v, m, a, b, chunk, buffers[w])
                for w, (a, b) in enumerate(split(k.shape[0], workers))
            ],
            workers,
        )
        state = merge(parts, phi.dtype)
        run_parallel(
            [
                partial(emit, phi, q, state, out[idx], a, b, chunk, buffers[w])
                for w, (a, b) in enumerate(split(q.shape[0], workers))
            ],
            workers,
        )

"""Recurrent kernel of causal FAVOR attention (Performer, eq. 11, one token at a time).

Pure function of C-contiguous float32/float64 arrays; the features are computed
outside (BLAS product + numpy's SIMD ``exp``), this kernel runs the recurrence that
BLAS cannot express.  The caller validates, stabilizes and splits the work.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT_OPTIONS, REDUCTION_JIT_OPTIONS

_SIGNATURES = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # query_features (B, m)
        nb.types.Array(dtype, 2, "C"),  # key_features (B, m)
        nb.types.Array(dtype, 2, "C"),  # values (B, dv)
        nb.types.Array(nb.float64, 1, "C"),  # decay (B,)
        nb.types.Array(dtype, 2, "C"),  # state (m, col_stop - col_start)
        nb.types.Array(dtype, 1, "C"),  # normalizer (m,)
        nb.types.Array(dtype, 2, "C"),  # out (B, dv)
        nb.int64,
        nb.int64,
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_SIGNATURES, **JIT_OPTIONS)
def causal_recurrence(
    query_features, key_features, values, decay, state, normalizer, out, col_start, col_stop
):
    """Run ``S_t = a_t S_{t-1} + phi(k_t) v_t^T``, ``out_t = phi(q_t) S_t / phi(q_t) z_t``.

    ``state`` holds the columns ``col_start:col_stop`` of ``S`` (m x dv); ``normalizer``
    is ``z`` (m,), updated the same way (``z_t = a_t z_{t-1} + phi(k_t)``).  Both are
    carried between calls.  ``decay[t] = a_t`` rescales the state when the key
    stabilizer grows (``exp(c_{t-1} - c_t)``, 1 otherwise).  Output rows with a zero
    normalizer ``phi(q_t) z_t`` are set to 0.  One fused pass over ``S`` per token.
    """
    n_tokens, n_out = query_features.shape
    width = col_stop - col_start
    numerator = np.zeros(width, dtype=state.dtype)
    for t in range(n_tokens):
        a = decay[t]
        if a != 1.0:
            for f in range(n_out):
                normalizer[f] *= a
                row = state[f]
                for c in range(width):
                    row[c] *= a
        value = values[t, col_start:col_stop]
        numerator[:] = 0.0
        denominator = 0.0
        for f in range(n_out):
            k = key_features[t, f]
            q = query_features[t, f]
            # z_t = a_t z_{t-1} + phi(k_t), and D_tt = phi(q_t)^T z_t (Performer eq. 11)
            normalizer[f] += k
            denominator += q * normalizer[f]
            row = state[f]
            # one fused pass over the state row: S_t = a_t S_{t-1} + phi(k_t) v_t^T, then
            # the numerator phi(q_t)^T S_t
            for c in range(width):
                s = row[c] + k * value[c]
                row[c] = s
                numerator[c] += q * s
        target = out[t, col_start:col_stop]
        if denominator == 0.0:
            for c in range(width):
                target[c] = 0.0
        else:  # D^-1
            inverse = 1.0 / denominator
            for c in range(width):
                target[c] = numerator[c] * inverse


# no ``arcp``: it would turn the division of the subnormal branch into the overflowing
# reciprocal
@nb.njit(**REDUCTION_JIT_OPTIONS)
def divide_rows(block, dv, zero_below, tiny, out):
    """``out[i] = block[i, :dv] / block[i, dv]``: 0 where ``|block[i, dv]| < zero_below``
    (a lost normalizer, see ``attention.common.normalize``), by the reciprocal where it
    is at least ``tiny`` (the smallest normal number: no overflow), else divided."""
    for i in range(block.shape[0]):
        den = block[i, dv]
        row = block[i]
        target = out[i]
        if abs(den) < zero_below:
            for j in range(dv):
                target[j] = row[j] * 0.0
        elif abs(den) < tiny:
            for j in range(dv):
                target[j] = row[j] / den
        else:
            inverse = 1.0 / den
            for j in range(dv):
                target[j] = row[j] * inverse

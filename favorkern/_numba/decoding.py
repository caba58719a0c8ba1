"""One decoding step of causal FAVOR attention for every head, in one fused pass.

Pure function of C-contiguous float32/float64 arrays; the features are computed
outside (BLAS product + numpy's ``exp``).  The caller validates shapes and computes
the stabilizers; this kernel checks finiteness, updates the states and emits the
outputs, reading each state once.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import JIT_OPTIONS

_SIGNATURES = [
    nb.boolean(
        nb.types.Array(dtype, 2, "C"),  # query_features (n_query_heads, m)
        nb.types.Array(dtype, 2, "C"),  # key_features (n_kv_heads, m)
        nb.types.Array(dtype, 2, "C"),  # values (n_kv_heads, dv)
        nb.types.Array(nb.float64, 1, "C"),  # decay (n_kv_heads,)
        nb.types.Array(dtype, 3, "C"),  # S (n_kv_heads, m, dv)
        nb.types.Array(dtype, 2, "C"),  # z (n_kv_heads, m)
        nb.types.Array(dtype, 2, "C"),  # out (n_query_heads, dv)
        nb.types.Array(dtype, 2, "C"),  # scratch numerators (group, dv)
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_SIGNATURES, **JIT_OPTIONS)
def decode_step(query_features, key_features, values, decay, S, z, out, numerator):
    """``S_h <- a_h S_h + phi(k_h) v_h^T``, ``z_h`` alike, then every query head's output.

    Query head ``i`` reads key/value head ``i // group`` (``group`` = the rows of
    ``numerator``).  Returns False, with nothing modified, when an input is not
    finite.  Outputs with a zero normalizer are 0.
    """
    n_kv, m = key_features.shape
    dv = values.shape[1]
    group = numerator.shape[0]
    for i in range(query_features.shape[0]):
        for f in range(m):
            if not np.isfinite(query_features[i, f]):
                return False
    for h in range(n_kv):
        for f in range(m):
            if not np.isfinite(key_features[h, f]):
                return False
        for c in range(dv):
            if not np.isfinite(values[h, c]):
                return False
    for h in range(n_kv):
        a = decay[h]
        state = S[h]
        norm = z[h]
        k_row = key_features[h]
        v_row = values[h]
        numerator[:, :] = 0.0
        first = h * group
        for f in range(m):
            k = k_row[f]
            norm[f] = a * norm[f] + k
            row = state[f]
            for c in range(dv):
                row[c] = a * row[c] + k * v_row[c]
            for j in range(group):
                q = query_features[first + j, f]
                target = numerator[j]
                for c in range(dv):
                    target[c] += q * row[c]
        for j in range(group):
            denominator = 0.0
            q_row = query_features[first + j]
            for f in range(m):
                denominator += q_row[f] * norm[f]
            target = out[first + j]
            if denominator == 0.0:
                for c in range(dv):
                    target[c] = 0.0
            else:
                inverse = 1.0 / denominator
                for c in range(dv):
                    target[c] = numerator[j, c] * inverse
    return True

"""Top-key terms of hybrid attention: per row, a few gathered keys of a block.

Pure function of C-contiguous arrays; the caller chooses the keys and computes the
stabilizers.  A dense product of the block's queries with every pooled key would
cost ``rows x pool x m``; the gathered dot products cost ``rows x n_top x m``.
"""

from __future__ import annotations

import math

import numba as nb

from . import JIT_OPTIONS

_SIGNATURES = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # psi_q (rows, m)
        nb.types.Array(dtype, 2, "C"),  # psi_cols (n, m)
        nb.types.Array(nb.float64, 1, "C"),  # r_cols (n,)
        nb.types.Array(nb.float64, 1, "C"),  # b (rows,)
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top)
        nb.types.Array(nb.boolean, 2, "C"),  # taken (rows, n_top)
        nb.types.Array(dtype, 2, "C"),  # exact (rows, n_top)
        nb.types.Array(dtype, 2, "C"),  # v1_cols (n, dv + 1): values and a 1
        nb.types.Array(dtype, 1, "C"),  # far_scale (rows,)
        nb.types.Array(dtype, 2, "C"),  # nd (rows, dv + 1): sums and normalizer
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_SIGNATURES, **JIT_OPTIONS)
def top_terms(psi_q, psi_cols, r_cols, b, index, taken, exact, v1_cols, far_scale, nd):
    """``nd_i += sum_t (exact_it - est_it) (v_j, 1)`` over the taken keys
    ``j = index[i, t]``: each key's exact weight replaces its feature estimate
    ``est_it = psi_q_i . psi_j exp(r_j - b_i) far_scale_i``."""
    rows, m = psi_q.shape
    width = v1_cols.shape[1]
    for i in range(rows):
        for t in range(index.shape[1]):
            if not taken[i, t]:
                continue
            j = index[i, t]
            dot = 0.0
            for f in range(m):
                dot += psi_q[i, f] * psi_cols[j, f]
            w = exact[i, t] - dot * math.exp(r_cols[j] - b[i]) * far_scale[i]
            for c in range(width):
                nd[i, c] += w * v1_cols[j, c]

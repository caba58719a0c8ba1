"""Top keys of hybrid attention: per row, a few keys chosen and gathered in a block.

Pure functions of C-contiguous arrays; the caller computes the logits of the block's
rows with the pooled keys (one product) and the stabilizers.  Gathered dot products
cost ``rows x n_top x m`` where a dense product with every pooled key would cost
``rows x pool x m``.
"""

from __future__ import annotations

import math

import numba as nb

from . import JIT_OPTIONS

_SELECT = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # logits (rows, n_cols), columns in score order
        nb.types.Array(nb.int64, 1, "C"),  # positions (n_cols,) of the columns' keys
        nb.types.Array(nb.boolean, 1, "C"),  # visible (n_cols,): not masked
        nb.int64,  # first: the position of row 0
        nb.int64,  # window
        nb.boolean,  # causal
        nb.int64,  # n_candidates
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top), out: columns
        nb.types.Array(dtype, 2, "C"),  # chosen logits (rows, n_top), out (-inf: none)
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_SELECT, **JIT_OPTIONS)
def select_top(logits, positions, visible, first, window, causal, n_candidates, index, chosen):
    """Per row ``i`` (position ``first + i``), its candidates (its first
    ``n_candidates`` columns whose key it may take: visible, and ``j <= i - window``
    causal or ``|i - j| >= window`` bidirectional) and among them the ``n_top`` of
    largest logit (ties: the earlier column), best first."""
    rows, n_top = index.shape
    n_cols = logits.shape[1]
    for i in range(rows):
        row = first + i
        filled = 0
        seen = 0
        low = -math.inf  # the smallest logit kept once the list is full
        for j in range(n_cols):
            if seen == n_candidates:
                break
            if not visible[j]:
                continue
            gap = row - positions[j]
            if (causal and gap < window) or (not causal and abs(gap) < window):
                continue
            seen += 1
            x = logits[i, j]
            if filled < n_top:
                p = filled
                filled += 1
            elif x > low:
                p = n_top - 1
            else:
                continue
            # insertion into the row's list, kept in decreasing order
            while p > 0 and chosen[i, p - 1] < x:
                chosen[i, p] = chosen[i, p - 1]
                index[i, p] = index[i, p - 1]
                p -= 1
            chosen[i, p] = x
            index[i, p] = j
            if filled == n_top:
                low = chosen[i, n_top - 1]
        for p in range(filled, n_top):
            chosen[i, p] = -math.inf
            index[i, p] = 0


_TERMS = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # psi_q (rows, m)
        nb.types.Array(dtype, 2, "C"),  # psi_pool (n_pool, m)
        nb.types.Array(dtype, 2, "C"),  # psi_part (n_part, m): columns n_pool ..
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top): feature rows
        nb.types.Array(nb.int64, 2, "C"),  # positions (rows, n_top): rows of v1
        nb.types.Array(dtype, 2, "C"),  # exact (rows, n_top): exact weights, 0 if none
        nb.types.Array(dtype, 2, "C"),  # scale (rows, n_top): of the estimates
        nb.types.Array(dtype, 2, "C"),  # v1 (L, dv + 1): values and a 1
        nb.types.Array(dtype, 2, "A"),  # nd (rows, dv + 1): sums and normalizer
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_TERMS, **JIT_OPTIONS)
def top_terms(psi_q, psi_pool, psi_part, index, positions, exact, scale, v1, nd):
    """``nd_i += sum_t (exact_it - est_it) v1_p`` over the chosen keys (feature row
    ``j = index[i, t]``, position ``p = positions[i, t]``; ``exact_it = scale_it = 0``
    where none): each key's exact weight replaces its feature estimate ``est_it =
    psi_q_i . psi_j scale_it``."""
    rows, m = psi_q.shape
    n_pool = psi_pool.shape[0]
    width = v1.shape[1]
    for i in range(rows):
        for t in range(index.shape[1]):
            if scale[i, t] == 0 and exact[i, t] == 0:
                continue
            j = index[i, t]
            dot = psi_q[i, 0] * 0  # the features' dtype: float32 sums vectorize twice as wide
            if j < n_pool:
                for f in range(m):
                    dot += psi_q[i, f] * psi_pool[j, f]
            else:
                for f in range(m):
                    dot += psi_q[i, f] * psi_part[j - n_pool, f]
            w = exact[i, t] - dot * scale[i, t]
            row = positions[i, t]
            for col in range(width):
                nd[i, col] += w * v1[row, col]

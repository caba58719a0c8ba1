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
        nb.types.Array(dtype, 2, "C"),  # logits (rows, n_cols)
        nb.types.Array(nb.int64, 1, "C"),  # order (n_cols,): columns by score, best first
        nb.types.Array(nb.boolean, 2, "C"),  # allowed (rows, n_cols)
        nb.int64,  # n_candidates
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top), out
        nb.types.Array(dtype, 2, "C"),  # chosen logits (rows, n_top), out (-inf: none)
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_SELECT, **JIT_OPTIONS)
def select_top(logits, order, allowed, n_candidates, index, chosen):
    """Per row, its candidates (the first ``n_candidates`` allowed columns of
    ``order``) and among them the ``n_top`` of largest logit (ties: the better score)."""
    rows, n_top = index.shape
    for i in range(rows):
        filled = 0
        seen = 0
        for t in range(order.shape[0]):
            if seen == n_candidates:
                break
            j = order[t]
            if not allowed[i, j]:
                continue
            seen += 1
            x = logits[i, j]
            if filled < n_top:
                p = filled
                filled += 1
            elif x > chosen[i, n_top - 1]:
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
        for p in range(filled, n_top):
            chosen[i, p] = -math.inf
            index[i, p] = 0


_TERMS = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # psi_q (rows, m)
        nb.types.Array(dtype, 2, "C"),  # psi_pool (n_pool, m)
        nb.types.Array(dtype, 2, "C"),  # psi_part (n_part, m): columns n_pool ..
        nb.types.Array(nb.float64, 1, "C"),  # r_cols (n_cols,)
        nb.types.Array(nb.int64, 1, "C"),  # cols (n_cols,): positions
        nb.types.Array(nb.float64, 1, "C"),  # b (rows,)
        nb.types.Array(nb.float64, 1, "C"),  # c (rows,)
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top)
        nb.types.Array(dtype, 2, "C"),  # chosen logits (rows, n_top)
        nb.types.Array(dtype, 2, "C"),  # v1 (L, dv + 1): values and a 1
        nb.types.Array(dtype, 1, "C"),  # far_scale (rows,)
        nb.types.Array(dtype, 2, "A"),  # nd (rows, dv + 1): sums and normalizer
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_TERMS, **JIT_OPTIONS)
def top_terms(psi_q, psi_pool, psi_part, r_cols, cols, b, c, index, chosen, v1, far_scale, nd):
    """``nd_i += sum_t (exp(s_it - c_i) - est_it) v1_j`` over the chosen keys: each
    key's exact weight replaces its feature estimate ``est_it = psi_q_i . psi_j
    exp(r_j - b_i) far_scale_i`` (both at the row's scale ``exp(-c_i)``)."""
    rows, m = psi_q.shape
    n_pool = psi_pool.shape[0]
    width = v1.shape[1]
    for i in range(rows):
        for t in range(index.shape[1]):
            if chosen[i, t] == -math.inf:
                continue
            j = index[i, t]
            dot = 0.0
            if j < n_pool:
                for f in range(m):
                    dot += psi_q[i, f] * psi_pool[j, f]
            else:
                for f in range(m):
                    dot += psi_q[i, f] * psi_part[j - n_pool, f]
            w = math.exp(chosen[i, t] - c[i]) - dot * math.exp(r_cols[j] - b[i]) * far_scale[i]
            row = cols[j]
            for col in range(width):
                nd[i, col] += w * v1[row, col]

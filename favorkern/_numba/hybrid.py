"""Kernels of hybrid attention's engine: top keys, and the weights of its blocks.

Pure functions of C-contiguous arrays.  Top keys: the caller computes the logits of
a group of rows with the pooled keys (one product) and the stabilizers; the chosen
keys' gathered dot products cost ``rows x n_top x m`` where a dense product with
every pooled key would cost ``rows x pool x m``.  Block weights: the masks and
stabilizers of the blocks' products in one pass each (no float64 temporaries).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import JIT_OPTIONS
from .elementwise import _exp

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
    if n_top == 0:
        return
    for i in range(rows):
        row = first + i
        filled = 0
        seen = 0
        low = -math.inf  # the smallest logit kept once the list is full
        last = row - window  # causal: the last key the row may take
        for j in range(n_cols):
            if seen == n_candidates:
                break
            if not visible[j]:
                continue
            if causal:
                if positions[j] > last:
                    continue
            elif abs(row - positions[j]) < window:
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


_APPLY = [
    nb.void(
        nb.types.Array(dtype, 2, "C"),  # psi_q (rows, m)
        nb.types.Array(dtype, 2, "C"),  # psi (n_pool, m): the pooled keys' features
        nb.types.Array(nb.float64, 1, "C"),  # r (n_pool,): their logs
        nb.types.Array(dtype, 2, "C"),  # values (n_pool, dv + 1): their values and a 1
        nb.types.Array(nb.int64, 2, "C"),  # index (rows, n_top): pooled keys chosen
        nb.types.Array(dtype, 2, "C"),  # chosen (rows, n_top): their logits (-inf: none)
        nb.types.Array(nb.float64, 1, "C"),  # c (rows,): the rows' constants
        nb.types.Array(nb.float64, 1, "C"),  # b (rows,): the rows' far key constants
        nb.types.Array(nb.float64, 1, "C"),  # far (rows,): the far sums' exp(a + b - c)
        nb.types.Array(dtype, 2, "C"),  # nd (rows, dv + 1): sums and normalizer, out
    )
    for dtype in (nb.float32, nb.float64)
]


@nb.njit(_APPLY, **JIT_OPTIONS)
def apply_top(psi_q, psi, r, values, index, chosen, c, b, far, nd):
    """``nd_i += sum_t (e^{s_it - c_i} - psi_q_i . psi_j e^{r_j - b_i} far_i) v1_j`` over
    the chosen keys ``j = index[i, t]`` of logits ``s_it > -inf``: each key's exact
    weight replaces its far estimate, both at the row's constant."""
    rows, m = psi_q.shape
    n_top = index.shape[1]
    width = values.shape[1]
    # per chosen key: exact weight and estimate's scale, in the features' dtype
    weight = np.empty(n_top, dtype=nd.dtype)
    scale = np.empty(n_top, dtype=nd.dtype)
    gap = np.empty(n_top)
    row = np.empty(width, dtype=nd.dtype)  # the row's sums (apart from nd: no aliasing)
    for i in range(rows):
        ci, bi, fi = c[i], b[i], far[i]
        row[:] = 0
        for t in range(n_top):
            gap[t] = min(r[index[i, t]] - bi, 0.0)  # r_j <= b_i for a chosen key
        for t in range(n_top):  # the exps apart from the gathers: they vectorize
            weight[t] = _exp(nd.dtype.type(chosen[i, t] - ci))
            scale[t] = _exp(nd.dtype.type(gap[t])) * nd.dtype.type(fi)
        for t in range(n_top):
            if chosen[i, t] == -math.inf:
                continue
            j = index[i, t]
            dot = psi_q[i, 0] * 0  # the features' dtype: float32 sums vectorize twice as wide
            for f in range(m):
                dot += psi_q[i, f] * psi[j, f]
            w = nd.dtype.type(weight[t] - dot * scale[t])
            for col in range(width):
                row[col] += w * values[j, col]
        for col in range(width):
            nd[i, col] += row[col]


def _lag_signature(dtype):
    f3 = nb.types.Array(dtype, 3, "C")
    d2 = nb.types.Array(nb.float64, 2, "C")
    return nb.void(f3, d2, d2)


@nb.njit([_lag_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def lag_weights(G, r, b):
    """``G[t, i, j] *= exp(r[t, j] - b[t, i])`` for ``j < i``, 0 for ``j >= i``: the
    blocks' products with their own far keys (row ``i`` reaches the keys before it),
    each key at its row's scale (``r_j <= b_i``: no overflow)."""
    n, rows, cols = G.shape
    for t in range(n):
        for i in range(rows):
            bi = b[t, i]
            for j in range(min(i, cols)):
                G[t, i, j] *= _exp(G.dtype.type(r[t, j] - bi))
            for j in range(min(i, cols), cols):
                G[t, i, j] = 0


@nb.njit([nb.void(nb.types.Array(dtype, 3, "C"), nb.int64, nb.int64)
          for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)  # fmt: skip
def near_band(G, before, window):
    """``G[t, i, j] = 0`` where row ``i`` and key ``j`` of its band (``delta = i + before
    - j`` positions apart) are not near, ``|delta| >= window``."""
    n, rows, width = G.shape
    for t in range(n):
        for i in range(rows):
            lo = max(0, i + before - window + 1)
            hi = min(width, i + before + window)
            for j in range(lo):
                G[t, i, j] = 0
            for j in range(max(lo, hi), width):
                G[t, i, j] = 0


def _band_signature(dtype):
    return nb.void(nb.types.Array(dtype, 3, "C"), dtype, nb.int64, nb.int64, nb.boolean,
                   nb.types.Array(nb.float64, 1, "C"))  # fmt: skip


@nb.njit([_band_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def band_logits(s, gamma, before, window, causal, row_max):
    """Blocks of products ``s[t, i, j]`` of row ``i`` with key ``j`` of its band (``i +
    before - j`` positions before it) to logits: ``gamma s`` in the window (``0 <=
    delta < window`` causal, ``|delta| < window`` else), ``-inf`` outside; ``row_max``
    (``n rows``) gets each row's largest."""
    n, rows, width = s.shape
    after = 0 if causal else window - 1
    for t in range(n):
        for i in range(rows):
            lo = max(0, i + before - window + 1)
            hi = min(width, i + before + after + 1)
            peak = -math.inf
            for j in range(lo):
                s[t, i, j] = -math.inf
            for j in range(lo, hi):
                x = s[t, i, j] * gamma
                s[t, i, j] = x
                peak = max(peak, x)
            for j in range(max(hi, lo), width):
                s[t, i, j] = -math.inf
            row_max[t * rows + i] = peak

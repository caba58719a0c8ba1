"""One decoding step of causal FAVOR attention for every head, in one fused pass.

Pure functions of C-contiguous float32/float64 arrays.  :func:`favor_token` (exp
maps) takes the features' matrix products from the caller and does the rest of a
token in one call: the stabilized features, finiteness and value checks, the state
update and the outputs.  :func:`decode_step` (every other map) takes finished
features.  The caller validates shapes; the kernels read each state once.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import JIT_OPTIONS
from .elementwise import _exp

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


def _token_signature(dtype):
    f2, f3 = nb.types.Array(dtype, 2, "C"), nb.types.Array(dtype, 3, "C")
    d1 = nb.types.Array(nb.float64, 1, "C")
    return nb.int64(
        f2, f2, f2,  # q (Nq, d), k (N, d), v (N, dv)
        nb.types.Array(nb.boolean, 1, "C"),  # hidden (N,)
        f2, d1, d1, nb.int64, nb.float64,  # column logs (H, m), a, log s (H,), heads, limit
        f3, f2, d1, f2,  # S (N, m, dv), z (N, m), c (N,), out (Nq, dv)
        f2, f2, f2,  # query and key products (Nq, m), (N, m) (features after), numerators (g, dv)
    )  # fmt: skip


@nb.njit(**JIT_OPTIONS)
def _finite_rows(X):
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            if not np.isfinite(X[i, j]):
                return False
    return True


@nb.njit(**JIT_OPTIONS)
def _shifted_top(row, column_log):
    """``row += column_log``; returns the largest entry."""
    top = -math.inf
    for f in range(row.shape[0]):
        x = row[f] + column_log[f]
        row[f] = x
        top = max(top, x)
    return top


@nb.njit(**JIT_OPTIONS)
def _exp_row(row, offset, one):
    """``row = min(exp(row - offset), one)``; returns the sum (NaN, inf: not finite)."""
    total = row[0] * 0
    for f in range(row.shape[0]):
        x = min(_exp(row[f] - offset), one)
        row[f] = x
        total += x
    return total


@nb.njit([_token_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def favor_token(q, k, v, hidden, column_log, sq_coef, log_const, heads, limit,
                S, z, c, out, query_features, key_features, numerator):  # fmt: skip
    """One decoding step of causal FAVOR attention with an exp map, for every head.

    ``query_features`` and ``key_features`` hold the products ``w_j . x`` (the
    caller's matrix product); key/value head ``n`` uses the map of head ``n % heads``
    (row 0 when ``column_log`` has one): features ``exp(w_j . x - a |x|^2 + log
    s_j)`` with the key stabilizer of :mod:`favorkern.attention.decoding` (``c`` the
    running maximum of the keys' largest logits: ``phi(k) e^{-c}`` has entries at
    most 1), the query features divided by their largest entry (the factor
    cancels).  Then ``S <- e^{c_old - c} S + phi(k) v^T``, ``z`` alike, and query
    head ``i`` (reading key/value head ``i // group``) gets ``phi(q) S / phi(q) z``
    (0 where that is ``0 / 0``).  Hidden keys leave their state unchanged.

    Returns ``-1`` (nothing modified) when an input, a feature or ``c`` is not finite
    (``c`` may be ``-inf``), ``-2`` when a value exceeds ``limit`` in magnitude,
    else the number of outputs with a zero normalizer.
    """
    n_kv, m = key_features.shape
    d = k.shape[1]
    dv = v.shape[1]
    group = numerator.shape[0]
    one = S.dtype.type(1.0)
    zero = S.dtype.type(0.0)
    shared = column_log.shape[0] == 1
    if not (_finite_rows(q) and _finite_rows(k) and _finite_rows(v)):
        return -1
    for n in range(n_kv):
        if c[n] != c[n] or c[n] == math.inf:
            return -1
        for i in range(dv):
            if abs(v[n, i]) > limit:
                return -2
    c_new = np.empty(n_kv)
    decay = np.empty(n_kv)
    for n in range(n_kv):
        w = 0 if shared else n % heads
        feats = key_features[n]
        top = _shifted_top(feats, column_log[w])
        if not np.isfinite(top):
            return -1
        norm = 0.0
        for i in range(d):
            norm += float(k[n, i]) * float(k[n, i])
        shift = sq_coef[w] * norm - log_const[w]
        row_log = -math.inf if hidden[n] else float(top) - shift
        new = max(c[n], row_log)
        c_new[n] = new
        decay[n] = math.exp(c[n] - new) if c[n] > -math.inf else 0.0
        if hidden[n]:
            feats[:] = zero
            continue
        # c = -inf while no key has entered (a key with |k|^2 beyond the float range
        # has row_log = -inf and features 0, as in a whole causal call)
        offset = S.dtype.type(shift + (new if new > -math.inf else 0.0))
        if not np.isfinite(_exp_row(feats, offset, one)):
            return -1
    for h in range(q.shape[0]):
        feats = query_features[h]
        top = _shifted_top(feats, column_log[0 if shared else (h // group) % heads])
        if not (np.isfinite(top) and np.isfinite(_exp_row(feats, top, one))):
            return -1
    n_zero = 0
    for n in range(n_kv):
        a = S.dtype.type(decay[n])
        state = S[n]
        norm_n = z[n]
        k_row = key_features[n]
        v_row = v[n]
        numerator[:, :] = zero
        first = n * group
        for f in range(m):
            kf = k_row[f]
            norm_n[f] = a * norm_n[f] + kf
            row = state[f]
            for col in range(dv):
                row[col] = a * row[col] + kf * v_row[col]
            for j in range(group):
                qf = query_features[first + j, f]
                target = numerator[j]
                for col in range(dv):
                    target[col] += qf * row[col]
        c[n] = c_new[n]
        for j in range(group):
            denominator = zero
            q_row = query_features[first + j]
            for f in range(m):
                denominator += q_row[f] * norm_n[f]
            target = out[first + j]
            if denominator == 0:
                n_zero += 1
                for col in range(dv):
                    target[col] = zero
            else:
                inverse = one / denominator
                for col in range(dv):
                    target[col] = numerator[j, col] * inverse
    return n_zero

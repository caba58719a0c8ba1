"""One decoding step of causal hybrid attention for every head, in two compiled passes.

Pure functions of C-contiguous arrays; the caller computes the features and
validates the state.  :func:`hybrid_emit` gives every query head's output from the
state; :func:`hybrid_absorb` moves a key that leaves the window into the
random-feature state and the candidate pools.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import JIT_OPTIONS
from .decoding import _finite_rows, _shifted_top
from .elementwise import _exp


def _emit_signature(dtype):
    f2, f3 = nb.types.Array(dtype, 2, "C"), nb.types.Array(dtype, 3, "C")
    b2 = nb.types.Array(nb.boolean, 2, "C")
    d1, d2 = nb.types.Array(nb.float64, 1, "C"), nb.types.Array(nb.float64, 2, "C")
    return nb.boolean(
        f2, d1, f2,  # psi_q (Nq, m), a (Nq,), q (Nq, d)
        f3, d1,  # S (N, m, dv + 1), B (N,)
        f3, f3, b2,  # glob_k (N, g, d), glob_v (N, g, dv), glob_hidden (N, g)
        f3, f3, b2,  # win_k (N, w, d), win_v (N, w, dv), win_hidden (N, w)
        f3, f3, f3, d2, nb.types.Array(nb.int64, 2, "C"),  # pool k, v, psi, r, pos
        nb.int64, nb.float64, f2,  # n_top, gamma, out (Nq, dv)
    )  # fmt: skip


@nb.njit(**JIT_OPTIONS)
def _logits(q_row, keys, hidden, gamma, logit):
    """``logit = gamma q . k`` per key, ``-inf`` where hidden; returns the largest,
    or NaN when one that is not hidden is not finite."""
    top = -math.inf
    finite = True
    for j in range(keys.shape[0]):
        logit[j] = -math.inf
        if not hidden[j]:
            s = 0.0
            for f in range(keys.shape[1]):
                s += q_row[f] * keys[j, f]
            logit[j] = gamma * s
            finite &= abs(logit[j]) < math.inf
            top = max(top, logit[j])
    return top if finite else math.nan


@nb.njit([_emit_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def hybrid_emit(psi_q, a, q, S, B, glob_k, glob_v, glob_hidden, win_k, win_v, win_hidden,
                pool_k, pool_v, pool_psi, pool_r, pool_pos, n_top, gamma, out):  # fmt: skip
    """One decoding step's outputs for every query head (``Nq = N group`` heads, query
    head ``h`` reading key/value head ``h // group``): far sums ``psi_q S`` at
    ``exp(a + B)``, exact terms of the global and window keys that are not hidden, and
    the ``n_top`` pooled keys of largest logit (pool slots in score order), whose
    estimates are replaced by their exact terms; all at one constant per row.

    False when a logit or a sum is not finite (the state held NaN or infinity, or a
    logit overflowed): a NaN logit fails every comparison, its key unnoticed."""
    n_q, m = psi_q.shape
    group = n_q // S.shape[0]
    width = S.shape[2]
    dv = width - 1
    n_glob, n_win, n_pool = glob_k.shape[1], win_k.shape[1], pool_k.shape[1]
    d = q.shape[1]
    logit_g = np.empty(n_glob)
    logit_w = np.empty(n_win)
    top_logit = np.empty(max(n_top, 1))
    top_slot = np.empty(max(n_top, 1), dtype=np.int64)
    nd = np.empty(width)
    acc = np.empty(width, dtype=S.dtype)
    bad = False
    for h in range(n_q):
        n = h // group
        c = -math.inf
        far_log = a[h] + B[n] if B[n] > -math.inf else -math.inf
        c = max(c, far_log)
        top_g = _logits(q[h], glob_k[n], glob_hidden[n], gamma, logit_g)
        top_w = _logits(q[h], win_k[n], win_hidden[n], gamma, logit_w)
        bad |= not (top_g < math.inf and top_w < math.inf)  # NaN: a logit not finite
        c = max(c, top_g, top_w)
        filled = 0
        for j in range(n_pool if n_top > 0 else 0):
            if pool_pos[h, j] < 0:
                continue
            s = 0.0
            for f in range(d):
                s += q[h, f] * pool_k[h, j, f]
            x = gamma * s
            bad |= not abs(x) < math.inf
            if filled < n_top:
                p = filled
                filled += 1
            elif x > top_logit[n_top - 1]:
                p = n_top - 1
            else:
                continue
            while p > 0 and top_logit[p - 1] < x:
                top_logit[p] = top_logit[p - 1]
                top_slot[p] = top_slot[p - 1]
                p -= 1
            top_logit[p] = x
            top_slot[p] = j
        if filled:
            c = max(c, top_logit[0])
        if c == -math.inf:
            c = 0.0
        far_scale = math.exp(far_log - c) if far_log > -math.inf else 0.0
        for col in range(width):
            nd[col] = 0.0
        if far_scale > 0.0:
            # psi_q S in the state's dtype (float32 rows vectorize twice as wide)
            acc[:] = 0
            state = S[n]
            psi_row = psi_q[h]
            for f in range(m):
                p_f = psi_row[f]
                row = state[f]
                for col in range(width):
                    acc[col] += p_f * row[col]
            for col in range(width):
                nd[col] = acc[col] * far_scale
        for j in range(n_glob):
            if logit_g[j] > -math.inf:
                w = math.exp(logit_g[j] - c)
                for col in range(dv):
                    nd[col] += w * glob_v[n, j, col]
                nd[dv] += w
        for j in range(n_win):
            if logit_w[j] > -math.inf:
                w = math.exp(logit_w[j] - c)
                for col in range(dv):
                    nd[col] += w * win_v[n, j, col]
                nd[dv] += w
        for t in range(filled):
            j = top_slot[t]
            dot = 0.0
            for f in range(m):
                dot += psi_q[h, f] * pool_psi[h, j, f]
            est = dot * math.exp(pool_r[h, j] - B[n]) * far_scale if far_scale > 0.0 else 0.0
            w = math.exp(top_logit[t] - c) - est
            for col in range(dv):
                nd[col] += w * pool_v[h, j, col]
            nd[dv] += w
        for col in range(width):  # before any test for 0 (LLVM folds tests after it)
            bad |= not abs(nd[col]) < math.inf
        den = nd[dv]
        for col in range(dv):
            out[h, col] = nd[col] / den if den != 0.0 else 0.0
    return not bad


def _absorb_signature(dtype):
    f2, f3 = nb.types.Array(dtype, 2, "C"), nb.types.Array(dtype, 3, "C")
    d1, d2 = nb.types.Array(nb.float64, 1, "C"), nb.types.Array(nb.float64, 2, "C")
    return nb.void(
        f2, d1, f2, f2, nb.types.Array(nb.boolean, 1, "C"),  # psi, r, k, v (N, .), hidden
        nb.int64, f3, d1,  # position, S (N, m, dv + 1), B (N,)
        d2, f3, f3, f3, d2, d2, nb.types.Array(nb.int64, 2, "C"),  # u, pool k v psi r score pos
    )  # fmt: skip


@nb.njit([_absorb_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def hybrid_absorb(psi, r, k, v, hidden, position, S, B, u, pool_k, pool_v, pool_psi, pool_r,
                  pool_score, pool_pos):  # fmt: skip
    """Key ``position`` of every key/value head leaves the window: ``S <- S e^{B - B'}
    + psi (v, 1) e^{r - B'}`` with ``B' = max(B, r)``, and for every query head (``u``
    its scoring direction, ``Nq = N group`` rows) the key enters the pool of the
    ``n_candidates`` best scores (slots kept in score order; ties: the earlier key)
    when its score beats the worst kept.  Hidden keys change nothing."""
    N, m, width = S.shape
    dv = width - 1
    n_q, n_pool = pool_pos.shape
    group = n_q // N
    d = k.shape[1]
    for n in range(N):
        if hidden[n]:
            continue
        new = max(B[n], r[n])
        shrink = math.exp(B[n] - new) if B[n] > -math.inf else 0.0
        # r = -inf (|k|^2 beyond the float range): features 0, as in a whole call
        w = math.exp(r[n] - new) if r[n] > -math.inf else 0.0
        for f in range(m):
            p_f = psi[n, f] * w
            for col in range(dv):
                S[n, f, col] = S[n, f, col] * shrink + p_f * v[n, col]
            S[n, f, dv] = S[n, f, dv] * shrink + p_f
        B[n] = new
        for g in range(group if n_pool > 0 else 0):
            h = n * group + g
            score = 0.0
            for f in range(d):
                score += u[h, f] * k[n, f]
            rank = 0
            while rank < n_pool and pool_pos[h, rank] >= 0 and pool_score[h, rank] >= score:
                rank += 1
            if rank == n_pool:
                continue
            for j in range(n_pool - 1, rank, -1):  # shift the worse slots down by one
                pool_score[h, j] = pool_score[h, j - 1]
                pool_pos[h, j] = pool_pos[h, j - 1]
                pool_r[h, j] = pool_r[h, j - 1]
                for f in range(d):
                    pool_k[h, j, f] = pool_k[h, j - 1, f]
                for f in range(dv):
                    pool_v[h, j, f] = pool_v[h, j - 1, f]
                for f in range(m):
                    pool_psi[h, j, f] = pool_psi[h, j - 1, f]
            pool_score[h, rank] = score
            pool_pos[h, rank] = position
            pool_r[h, rank] = r[n]
            for f in range(d):
                pool_k[h, rank, f] = k[n, f]
            for f in range(dv):
                pool_v[h, rank, f] = v[n, f]
            for f in range(m):
                pool_psi[h, rank, f] = psi[n, f]


def _token_signature(dtype):
    f1, f2, f3 = (nb.types.Array(dtype, n, "C") for n in (1, 2, 3))
    b1, b2 = nb.types.Array(nb.boolean, 1, "C"), nb.types.Array(nb.boolean, 2, "C")
    d1, d2 = nb.types.Array(nb.float64, 1, "C"), nb.types.Array(nb.float64, 2, "C")
    i2 = nb.types.Array(nb.int64, 2, "C")
    return nb.int64(
        f2, f2, f2, b1,  # q (Nq, d), k (N, d), v (N, dv), hidden (N,)
        nb.int64, nb.int64, nb.int64, nb.int64, nb.float64,  # position, w, g, n_top, gamma
        nb.float64,  # limit of |v|
        f2, d1, f2, d1,  # psi_q (Nq, m), a (Nq,), psi_far (N, m), r_far (N,)
        nb.boolean, f1, nb.float64, nb.float64,  # finish, column logs (m,), a, max log s
        f3, d1, f3, f3, b2, f3, f3, b2,  # S, B, glob k v hidden, win k v hidden
        d2, f3, f3, f3, d2, d2, i2,  # u, pool k v psi r score pos
        f2,  # out (Nq, dv)
    )  # fmt: skip


@nb.njit(**JIT_OPTIONS)
def _finish(psi, x, log_r, column_log, sq_coef, log_const):
    """Rows of products ``w . x`` to ``psi = exp(w . x + log s_j - top) <= 1`` and
    ``log_r = top - a |x|^2 + max log s`` (``phi(x) = exp(log_r) psi``)."""
    one = psi.dtype.type(1.0)
    for i in range(psi.shape[0]):
        row = psi[i]
        top = _shifted_top(row, column_log)
        top_t = psi.dtype.type(top)
        for f in range(row.shape[0]):
            row[f] = min(_exp(row[f] - top_t), one)
        norm = 0.0
        for j in range(x.shape[1]):
            norm += float(x[i, j]) * float(x[i, j])
        log_r[i] = top - (sq_coef * norm - log_const)


@nb.njit(**JIT_OPTIONS)
def _finite_row(x):
    for i in range(x.shape[0]):
        if not abs(x[i]) < math.inf:
            return False
    return True


@nb.njit(**JIT_OPTIONS)
def _no_nan(x):
    """No NaN or ``+inf`` (``-inf``: every feature underflowed)."""
    for i in range(x.shape[0]):
        if not x[i] < math.inf:
            return False
    return True


@nb.njit(**JIT_OPTIONS)
def _shapes_fit(q, k, v, psi_q, psi_far, S, glob_k, glob_v, glob_hidden, win_k, win_v,
                win_hidden, u, pool_k, pool_v, pool_psi, pool_score, out):  # fmt: skip
    N, m, width = S.shape
    n_q, d = q.shape
    if N == 0 or n_q % N or k.shape != (N, d) or v.shape != (N, width - 1):
        return False
    if psi_q.shape != (n_q, m) or psi_far.shape != (N, m) or out.shape != (n_q, width - 1):
        return False
    g, w = glob_k.shape[1], win_k.shape[1]
    if glob_k.shape != (N, g, d) or glob_v.shape != (N, g, width - 1):
        return False
    if win_k.shape != (N, w, d) or win_v.shape != (N, w, width - 1):
        return False
    if glob_hidden.shape != (N, g) or win_hidden.shape != (N, w):
        return False
    P = pool_k.shape[1]
    if P and u.shape != (n_q, d):
        return False
    return (
        pool_k.shape == (n_q, P, d) and pool_v.shape == (n_q, P, width - 1)
        and pool_psi.shape == (n_q, P, m) and pool_score.shape == (n_q, P)
    )  # fmt: skip


@nb.njit([_token_signature(dtype) for dtype in (nb.float32, nb.float64)], **JIT_OPTIONS)
def hybrid_token(q, k, v, hidden, position, window, n_global, n_top, gamma, limit,
                 psi_q, a, psi_far, r_far, finish, column_log, sq_coef, log_const,
                 S, B, glob_k, glob_v, glob_hidden, win_k, win_v, win_hidden,
                 u, pool_k, pool_v, pool_psi, pool_r, pool_score, pool_pos, out):  # fmt: skip
    """One token of causal hybrid attention for every head, from the state in place.

    Key ``position`` enters the global keys (``position < n_global``) or the window
    (ring slot ``(position - n_global) % window``); the key it replaces there, or
    without a window the key itself, leaves for the random-feature state and the
    candidate pools (:func:`hybrid_absorb`, features ``psi_far``, ``r_far`` of that
    key); then :func:`hybrid_emit` gives every query head's output.  ``finish``:
    ``psi_q`` and ``psi_far`` hold the products ``w . x`` of an exp map (column logs
    ``log s_j - max log s``, ``a |x|^2``, ``max log s``), turned into stable
    features here; else they are features with their logs in ``a`` and ``r_far``.

    Returns 0, or (nothing modified) ``-1`` when an input or a feature is not
    finite, ``-2`` when the arrays' shapes disagree, ``-3`` when ``B`` holds NaN or
    ``+inf``, ``-4`` when a value exceeds ``limit`` in magnitude; ``-3`` after the
    update when a logit or sum of the outputs is not finite (another array of the
    state held NaN or infinity).
    """
    if not _shapes_fit(q, k, v, psi_q, psi_far, S, glob_k, glob_v, glob_hidden, win_k, win_v,
                       win_hidden, u, pool_k, pool_v, pool_psi, pool_score, out):  # fmt: skip
        return -2
    if pool_r.shape != pool_score.shape or pool_pos.shape != pool_score.shape:
        return -2
    if a.shape[0] != q.shape[0] or r_far.shape[0] != k.shape[0] or hidden.shape[0] != k.shape[0]:
        return -2
    if B.shape[0] != k.shape[0] or (finish and column_log.shape[0] != psi_q.shape[1]):
        return -2
    if not (_finite_rows(q) and _finite_rows(k) and _finite_rows(v)):
        return -1
    for n in range(v.shape[0]):
        for i in range(v.shape[1]):
            if abs(v[n, i]) > limit:  # S's sums could overflow
                return -4
    for n in range(B.shape[0]):
        if not B[n] < math.inf:  # NaN or +inf; -inf: no far key yet
            return -3
    pos, w, g = position, window, n_global
    far = -1  # the position leaving for the far state
    far_k, far_v, far_hidden = k, v, hidden
    slot = -1
    if pos >= g and w:
        slot = (pos - g) % w
        if pos - w >= g:
            far = pos - w
            # the leaving key, copied before its slot takes the new one
            far_k = win_k[:, slot].copy()
            far_v = win_v[:, slot].copy()
            far_hidden = win_hidden[:, slot].copy()
    elif pos >= g:
        far = pos
        far_k, far_v, far_hidden = k.copy(), v.copy(), hidden.copy()
    # features first, checked before anything of the state changes
    if finish:
        _finish(psi_q, q, a, column_log, sq_coef, log_const)
        if far >= 0:
            _finish(psi_far, far_k, r_far, column_log, sq_coef, log_const)
    if not (_finite_rows(psi_q) and _no_nan(a)):
        return -1
    if far >= 0:
        for n in range(far_k.shape[0]):
            if not far_hidden[n] and not (_finite_row(psi_far[n]) and r_far[n] < math.inf):
                return -1
    if pos < g:
        glob_k[:, pos] = k
        glob_v[:, pos] = v
        glob_hidden[:, pos] = hidden
    elif w:
        win_k[:, slot] = k
        win_v[:, slot] = v
        win_hidden[:, slot] = hidden
    if far >= 0:
        hybrid_absorb(psi_far, r_far, far_k, far_v, far_hidden, far, S, B, u, pool_k, pool_v,
                      pool_psi, pool_r, pool_score, pool_pos)  # fmt: skip
    if not hybrid_emit(psi_q, a, q, S, B, glob_k, glob_v, glob_hidden, win_k, win_v, win_hidden,
                       pool_k, pool_v, pool_psi, pool_r, pool_pos, n_top, gamma, out):  # fmt: skip
        return -3
    return 0

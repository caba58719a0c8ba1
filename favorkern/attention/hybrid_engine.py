"""The hybrid engine: one (batch, head) of exact-plus-random-feature attention in blocks.

Row ``i``'s keys split into exact keys ``E_i`` (window, global keys, top keys) and
far keys ``F_i``; with ``phi(x) = exp(r(x)) psi(x)`` (``r`` a per-row log factor,
``|psi| <= 1`` for exp and cos maps):

    out_i = (sum_{E_i} e^{s_ij} v_j + sum_{F_i} phi(q_i).phi(k_j) v_j) / (same with 1).

Causal far keys are ``g <= j <= i - w``: a causal FAVOR pass whose keys lag the queries
by ``w`` positions (chunked: a state of the keys far for the whole block, and a masked
product with the block's own far keys), so no window key is ever added and subtracted.
Bidirectional far keys are that forward pass plus the same pass over the reversed
sequence (``j >= i + max(w, 1)``).  The exact keys of a block of queries are one dense
product with the block's band of keys; the top keys' exact terms, and the removal of
their estimates from the far sums, are one compiled kernel per block.

Stabilizers: per query the row log ``a_i`` of its features; per key ``r_j``; the far
sums of row ``i`` are kept at ``exp(a_i + b_i)`` with ``b_i`` the running maximum of
``r_j`` over the far keys row ``i`` reaches (no output depends on a later token); the
row's exact and far terms then share ``c_i = max(a_i + b_i, max_E s_ij)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hybrid_head", "stable_features", "TopKeys"]

# Query rows per block: the exact band is (rows x (rows + window)) and the far part's
# masked product (rows x rows); 64 measured fastest at window 64, m = 256.
CHUNK = 64


class TopKeys:
    """Top-key settings of one head: ``n_top`` of ``n_candidates`` by ``scores``."""

    def __init__(self, n_top, n_candidates, scores):
        self.n_top = n_top
        self.n_candidates = n_candidates
        self.scores = scores  # (L,) float64: candidate_query . k_j


def stable_features(feat, X, buf):
    """``psi`` (written into ``buf``) and ``r`` (float64) with ``phi(x) = exp(r) psi``.

    ``|psi| <= 1``: exp maps divide by the largest feature, cos maps by their row
    factor, other maps by their largest magnitude.
    """
    if feat.kind == "exp":
        # exp(w.x' - a|x'|^2 + log s): the row maximum of the bare product is the
        # largest logit up to the row's own constant, so one shift gives psi <= 1
        feat._product(X, buf)
        top = buf.max(axis=1)
        buf -= top[:, np.newaxis]
        feat._exp(buf, out=buf)
        sq = np.einsum("ij,ij->i", X, X).astype(np.float64)
        r = top.astype(np.float64)
        if feat.unit != 1.0:
            r /= feat.unit
        r -= sq * feat.spec.sq_coef - feat.log_const
        return buf, r
    r, _ = feat.key_logits(X, buf)
    if feat.kind == "relu":
        # unbounded values: divided by their row maximum (its log joins r), so that
        # products of huge rows cannot overflow
        peak = np.abs(buf).max(axis=1)
        positive = peak > 0
        if positive.any():
            buf[positive] /= peak[positive, np.newaxis]
        r = np.where(positive, np.log(np.where(positive, peak, 1.0)), 0.0) + feat.log_const
    return buf, r


def _exp(x, dtype):
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        return np.exp(x).astype(dtype, copy=False)


# Largest spread of row constants folded into one key scale (fast path of far_blocks):
# exp(spread) must stay far below the dtype's largest number.
_SPREAD = {np.dtype(np.float32): 60.0, np.dtype(np.float64): 600.0}


class _Masks:
    """0/1 and 0/-inf block patterns, made once per shape."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._cache = {}

    def get(self, key, make):
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value


def far_blocks(feat, q, k, v1, mask, key_lo, key_hi, lag, chunk, keep=None):
    """Causal far sums of one head in blocks of queries.

    Row ``i`` sums ``phi(q_i).phi(k_j) v1_j`` (``v1``: the values with a column of
    ones, so the last column is the normalizer) over the unmasked keys ``key_lo <= j
    < key_hi`` with ``j <= i - lag``.  Yields ``(start, stop, psi_q, a, nd, b, part)``:
    the block's query features ``psi_q`` and row logs ``a``, its sums ``nd`` at scale
    ``exp(-(a_i + b_i))`` (``b_i = -inf`` where no key is reached) and ``part = (lo,
    psi, r)``, the block's own far keys ``lo ..`` with their features and logs.
    ``keep(lo, psi, r)`` is called after each block (the top-key pool).
    """
    L, dtype = q.shape[0], feat.dtype
    width = v1.shape[1]
    S = np.zeros((feat.n_out, width), dtype=dtype)  # sum psi_k (v_j, 1) exp(r_j - B)
    B = -np.inf
    spread = _SPREAD[np.dtype(dtype)]
    nxt = key_lo  # the state holds keys key_lo .. nxt - 1
    qbuf, kbuf = feat.empty(chunk), feat.empty(chunk + 1)
    # row i' of a block reaches key j' of its part iff i' > j' when the part starts
    # at start - lag + 1 (every block but the first ones)
    tri = np.tril(np.ones((chunk, chunk), dtype=dtype), -1)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        psi_q, a = stable_features(feat, q[s:e], qbuf[: e - s])
        lo, hi = nxt, min(key_hi, max(nxt, e - lag + 1))
        n = hi - lo
        rows = np.arange(s, e)
        b = np.full(e - s, B)
        psi_k = r = None
        if n > 0:
            psi_k, r = stable_features(feat, k[lo:hi], kbuf[:n])
            if mask is not None:
                hidden = mask[lo:hi]
                if hidden.any():
                    r = np.where(hidden, -np.inf, r)
                    psi_k[hidden] = 0.0
            n_reach = np.clip(rows - lag - lo + 1, 0, n)
            has = n_reach > 0
            if has.any():
                prefix = np.maximum.accumulate(r)
                b[has] = np.maximum(B, prefix[n_reach[has] - 1])
        finite = np.isfinite(b)
        b_safe = np.where(finite, b, 0.0)
        if np.isfinite(B):
            nd = psi_q @ S
            nd *= _exp(np.where(finite, B - b_safe, -np.inf), dtype)[:, None]
        else:
            nd = np.zeros((e - s, width), dtype=dtype)
        top = -np.inf if n == 0 else float(r.max())
        B_new = max(B, top)
        weighted = None
        if top > -np.inf:
            wk = _exp(r - B_new, dtype)
            weighted = v1[lo:hi] * wk[:, None]
            if has.any():
                G = psi_q @ psi_k.T
                if float(B_new - b_safe[has].min()) <= spread:
                    # exp(r_j - b_i) = exp(r_j - B_new) exp(B_new - b_i): the key part
                    # is in ``weighted``
                    G *= _exp(np.where(has, B_new - b_safe, -np.inf), dtype)[:, None]
                    if lo == s - lag + 1:
                        G *= tri[: e - s, :n]
                    else:
                        G *= (rows[:, None] - lag) >= np.arange(lo, hi)[None, :]
                    nd += G @ weighted
                else:
                    reach = (rows[:, None] - lag) >= np.arange(lo, hi)[None, :]
                    G *= _exp(np.where(reach, r[None, :] - b_safe[:, None], -np.inf), dtype)
                    nd += G @ v1[lo:hi]
        yield s, e, psi_q, a, nd, b, (lo, psi_k, r)
        if weighted is not None:
            if B_new > B and np.isfinite(B):
                S *= dtype.type(np.exp(B - B_new))
            B = B_new
            S += psi_k.T @ weighted
        if n > 0:
            if keep is not None:
                keep(lo, psi_k, r)
            nxt = hi


def _exact_logits(q_blk, k, mask, gamma, keys, allowed):
    """Logits ``gamma q.k`` of ``keys`` (positions) for a block, ``-inf`` where not allowed.

    ``allowed``: a bool array, or a cached 0/-inf array added as it is."""
    s = q_blk @ k[keys].T
    s *= s.dtype.type(gamma)
    if allowed.dtype == bool:
        s[~allowed] = -np.inf
    else:
        s += allowed
    if mask is not None:
        hidden = mask[keys]
        if hidden.any():
            s[:, hidden] = -np.inf
    return s


def _finish(nd, a, b, s, v1_ex, top=None):
    """The row outputs from far sums ``nd`` (at ``exp(a + b)``), exact logits ``s`` of
    the values ``v1_ex`` and the top keys' terms (``top``: adds them)."""
    dtype = nd.dtype
    finite = np.isfinite(b)
    far_log = np.where(finite, a + np.where(finite, b, 0.0), -np.inf)
    row_max = s.max(axis=1).astype(np.float64) if s.shape[1] else np.full(len(a), -np.inf)
    c = np.maximum(far_log, row_max)
    if top is not None:
        c = np.maximum(c, top.row_max)
    c = np.where(np.isfinite(c), c, 0.0)
    far_scale = _exp(far_log - c, dtype)
    nd *= far_scale[:, None]
    if s.shape[1]:
        s -= c.astype(dtype)[:, None]
        with np.errstate(under="ignore"):
            np.exp(s, out=s)
        nd += s @ v1_ex
    if top is not None:
        top.add(nd, c, far_scale)
    den = nd[:, -1]
    den[den == 0] = np.inf
    return nd[:, :-1] / den[:, None]


class _Chosen:
    """A block's top keys: exact terms and removal of their far estimates."""

    def __init__(self, q_blk, k, v1, cols, allowed, by_score, top, gamma, psi_q, psi_cols,
                 r_cols, b):  # fmt: skip
        n_top, n_candidates = top.n_top, top.n_candidates
        in_order = allowed[:, by_score]
        candidate = np.zeros_like(allowed)
        candidate[:, by_score] = in_order & (np.cumsum(in_order, axis=1) <= n_candidates)
        logits = q_blk @ k[cols].T
        logits *= logits.dtype.type(gamma)
        logits[~candidate] = -np.inf
        n_cols = cols.size
        if n_cols > n_top:
            index = np.argpartition(logits, n_cols - n_top, axis=1)[:, n_cols - n_top :]
        else:
            index = np.broadcast_to(np.arange(n_cols), (q_blk.shape[0], n_cols))
        self.index = np.array(index, dtype=np.int64, order="C")  # writable: numba
        self.taken = np.take_along_axis(candidate, self.index, axis=1)
        self.logits = np.take_along_axis(logits, self.index, axis=1)
        self.row_max = self.logits.max(axis=1).astype(np.float64)
        self.psi_q, self.psi_cols, self.r_cols, self.b = psi_q, psi_cols, r_cols, b
        self.v1_cols = np.ascontiguousarray(v1[cols])

    def add(self, nd, c, far_scale):
        from .._numba.hybrid import top_terms

        dtype = nd.dtype
        exact = _exp(self.logits.astype(np.float64) - c[:, None], dtype)
        exact[~self.taken] = 0.0
        b = np.where(np.isfinite(self.b), self.b, 0.0)
        top_terms(
            np.ascontiguousarray(self.psi_q), np.ascontiguousarray(self.psi_cols, dtype=dtype),
            np.ascontiguousarray(self.r_cols, dtype=np.float64), b, self.index, self.taken,
            exact, self.v1_cols, far_scale, nd,
        )  # fmt: skip


def with_ones(v):
    """``v`` with a column of ones: one product gives the sums and the normalizer."""
    v1 = np.empty((v.shape[0], v.shape[1] + 1), dtype=v.dtype)
    v1[:, :-1] = v
    v1[:, -1] = 1
    return v1


def hybrid_head(feat, q, k, v, mask, gamma, window, n_global, causal, top=None, chunk=CHUNK):
    """The hybrid attention of one head (prepared ``q``, ``k``), in ``v``'s dtype."""
    v1 = with_ones(v)
    if causal:
        return _causal(feat, q, k, v1, mask, gamma, window, n_global, top, chunk)
    return _bidirectional(feat, q, k, v1, mask, gamma, window, n_global, top, chunk)


def _causal(feat, q, k, v1, mask, gamma, window, n_global, top, chunk):
    L = q.shape[0]
    g = min(n_global, L)
    out = np.empty((L, v1.shape[1] - 1), dtype=v1.dtype)
    masks = _Masks(v1.dtype)
    pool = _CausalPool(top, feat) if top is not None else None
    blocks = far_blocks(feat, q, k, v1, mask, g, L, window, chunk,
                        keep=None if pool is None else pool.keep)  # fmt: skip
    for s, e, psi_q, a, nd, b, part in blocks:
        lo = max(g, s - window + 1)
        band = np.arange(lo, e) if window else np.zeros(0, dtype=np.intp)
        keys = np.concatenate([np.arange(min(g, e)), band])
        if s >= g and lo == s - window + 1:
            # every global key allowed, the band's pattern fixed by its shape
            allowed = masks.get(("causal", e - s, g, window), lambda: _bias(
                _causal_allowed(np.arange(s, e), keys, g, window), v1.dtype))  # fmt: skip
        else:
            allowed = _causal_allowed(np.arange(s, e), keys, g, window)
        s_ex = _exact_logits(q[s:e], k, mask, gamma, keys, allowed)
        chosen = None
        if pool is not None:
            chosen = pool.choose(q[s:e], k, v1, np.arange(s, e), window, part, gamma, psi_q, b)
        out[s:e] = _finish(nd, a, b, s_ex, v1[keys], chosen)
    return out


def _causal_allowed(rows, keys, g, window):
    delta = rows[:, None] - keys[None, :]
    return (delta >= 0) & ((keys[None, :] < g) | (delta < window))


def _bias(allowed, dtype):
    return np.where(allowed, 0.0, -np.inf).astype(dtype)


class _CausalPool:
    """The best ``n_candidates`` keys by score among those that left every window."""

    def __init__(self, top, feat):
        self.top = top
        self.cols = np.zeros(0, dtype=np.intp)
        self.psi = np.zeros((0, feat.n_out), dtype=feat.dtype)
        self.r = np.zeros(0)

    def choose(self, q_blk, k, v1, rows, window, part, gamma, psi_q, b):
        lo, psi_k, r = part
        n = 0 if psi_k is None else psi_k.shape[0]
        cols = np.concatenate([self.cols, np.arange(lo, lo + n)])
        if cols.size == 0:
            return None
        reach = (rows[:, None] - window) >= np.arange(lo, lo + n)[None, :]
        if n:
            reach &= np.isfinite(r)[None, :]  # masked keys
        allowed = np.concatenate([np.ones((rows.size, self.cols.size), dtype=bool), reach], 1)
        scores = self.top.scores
        by_score = np.lexsort((cols, -scores[cols]))
        psi_cols = self.psi if n == 0 else np.concatenate([self.psi, psi_k])
        r_cols = self.r if n == 0 else np.concatenate([self.r, r])
        return _Chosen(q_blk, k, v1, cols, allowed, by_score, self.top, gamma, psi_q,
                       psi_cols, r_cols, b)  # fmt: skip

    def keep(self, lo, psi_k, r):
        visible = np.isfinite(r)
        new = np.arange(lo, lo + r.size)[visible]
        if new.size == 0:
            return
        merged = np.concatenate([self.cols, new])
        scores = self.top.scores
        keep = np.sort(np.lexsort((merged, -scores[merged]))[: self.top.n_candidates])
        self.cols = merged[keep]
        self.psi = np.concatenate([self.psi, psi_k[visible]])[keep]
        self.r = np.concatenate([self.r, r[visible]])[keep]


def _bidirectional(feat, q, k, v1, mask, gamma, window, n_global, top, chunk):
    L = q.shape[0]
    Lk = k.shape[0]
    g = min(n_global, Lk)
    masks = _Masks(v1.dtype)
    pool = _bidirectional_pool(top, k, mask, g, window, feat) if top is not None else None
    out = np.empty((L, v1.shape[1] - 1), dtype=v1.dtype)
    for s, e, psi_q, a, nd, b in _bidirectional_far(feat, q, k, v1, mask, g, window, chunk):
        rows = np.arange(s, e)
        if window:
            lo, hi = max(g, s - window + 1), min(Lk, e + window - 1)
            band = np.arange(lo, hi)
        else:
            lo = hi = 0
            band = np.zeros(0, dtype=np.intp)
        keys = np.concatenate([np.arange(g), band])

        def make():
            return (keys[None, :] < g) | (np.abs(rows[:, None] - keys[None, :]) < window)

        if lo == s - window + 1 and hi == e + window - 1:
            allowed = masks.get(("bi", e - s, g, window), lambda: _bias(make(), v1.dtype))
        else:
            allowed = make()
        s_ex = _exact_logits(q[s:e], k, mask, gamma, keys, allowed)
        chosen = None
        if pool is not None and pool[0].size:
            cols, psi_cols, r_cols = pool
            allowed_c = np.abs(rows[:, None] - cols[None, :]) >= window
            by_score = np.arange(cols.size)
            chosen = _Chosen(q[s:e], k, v1, cols, allowed_c, by_score, top, gamma,
                             np.ascontiguousarray(psi_q), psi_cols, r_cols, b)  # fmt: skip
        out[s:e] = _finish(nd, a, b, s_ex, v1[keys], chosen)
    return out


def _bidirectional_far(feat, q, k, v1, mask, g, window, chunk):
    """Far sums of every query block (keys ``j >= g`` with ``|i - j| >= window``), in
    the order of the rows: ``(start, stop, psi_q, a, nd, b)``."""
    L, dtype = q.shape[0], v1.dtype
    Lk = k.shape[0]
    if window == 0:
        # every key is far: one state over all of them (Lq may differ from Lk)
        S, B = _state_of(feat, k, v1, mask, g, Lk, chunk)
        buf = feat.empty(chunk)
        for s in range(0, L, chunk):
            e = min(L, s + chunk)
            psi_q, a = stable_features(feat, q[s:e], buf[: e - s])
            yield s, e, psi_q, a, psi_q @ S, np.full(e - s, B)
        return
    # forward: g <= j <= i - window, kept per row
    fwd = np.empty((L, v1.shape[1]), dtype=dtype)
    fwd_b = np.empty(L)
    for s, e, _, _, nd, b, _ in far_blocks(feat, q, k, v1, mask, g, Lk, window, chunk):
        fwd[s:e], fwd_b[s:e] = nd, b
    # backward: j >= i + window, the same pass over the reversed sequence (query i and
    # key i are one position, so both reverse alike); keys g .. Lk - 1 are the
    # reversed 0 .. Lk - 1 - g
    rmask = None if mask is None else mask[::-1]
    back = far_blocks(feat, q[::-1], k[::-1], v1[::-1], rmask, 0, Lk - g, window, chunk)
    for rs, re_, psi_r, a_r, nd_b, b_b, _ in back:
        s, e = L - re_, L - rs
        b_b, b_f = b_b[::-1], fwd_b[s:e]
        b = np.maximum(b_f, b_b)
        finite = np.isfinite(b)
        b_safe = np.where(finite, b, 0.0)
        sf = _exp(np.where(np.isfinite(b_f), b_f - b_safe, -np.inf), dtype)
        sb = _exp(np.where(np.isfinite(b_b), b_b - b_safe, -np.inf), dtype)
        nd = fwd[s:e] * sf[:, None]
        nd += nd_b[::-1] * sb[:, None]
        yield s, e, psi_r[::-1], a_r[::-1], nd, b


def _state_of(feat, k, v1, mask, lo, hi, chunk):
    """``(S, B)``: the key state of the unmasked keys ``lo .. hi - 1`` at ``exp(-B)``."""
    dtype = feat.dtype
    S = np.zeros((feat.n_out, v1.shape[1]), dtype=dtype)
    B = -np.inf
    buf = feat.empty(chunk)
    for s in range(lo, hi, chunk):
        e = min(hi, s + chunk)
        psi, r = stable_features(feat, k[s:e], buf[: e - s])
        if mask is not None and mask[s:e].any():
            r = np.where(mask[s:e], -np.inf, r)
            psi[mask[s:e]] = 0.0
        top = float(r.max())
        if top == -np.inf:
            continue
        if top > B:
            if np.isfinite(B):
                S *= dtype.type(np.exp(B - top))
            B = top
        S += psi.T @ (v1[s:e] * _exp(r - B, dtype)[:, None])
    return S, B


def _bidirectional_pool(top, k, mask, g, window, feat):
    """The keys any row may take, in score order (a row's candidates are its first
    ``n_candidates`` outside its window, so among the best ``n_candidates + 2 window - 1``),
    with their features and logs."""
    positions = np.arange(g, k.shape[0])
    if mask is not None:
        positions = positions[~mask[g:]]
    scores = top.scores
    order = positions[np.lexsort((positions, -scores[positions]))]
    cols = order[: top.n_candidates + max(2 * window - 1, 0)]
    psi = feat.empty(cols.size, rows=True)
    psi, r = stable_features(feat, np.ascontiguousarray(k[cols]), psi)
    return cols, psi, r

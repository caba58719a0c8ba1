"""The hybrid engine: one (batch, head) of exact-plus-random-feature attention in blocks.

Row ``i``'s keys split into exact keys ``E_i`` (window, global keys, top keys) and
far keys ``F_i``; with ``phi(x) = exp(r(x)) psi(x)`` (``r`` a per-row log factor,
``|psi| <= 1`` for exp and cos maps):

    out_i = (sum_{E_i} e^{s_ij} v_j + sum_{F_i} phi(q_i).phi(k_j) v_j) / (same with 1).

Causal far keys are ``g <= j <= i - w``: a causal FAVOR pass whose keys lag the queries
by ``w`` positions (chunked: a state of the keys far for the whole block, and a masked
product with the block's own far keys), so no window key is ever added and subtracted.
Bidirectional far keys (``|i - j| >= w``) are one state of every key minus the
estimates of the row's near keys (a product per block of queries with its band of
keys).  The exact keys of a block of queries are one dense product with the block's
band of keys.  The top keys of a group of blocks: one product scores the candidate
pool, one compiled kernel chooses each row's keys and one applies their exact terms
and removes their estimates from the far sums.  A causal head may run over ranges of
its rows on several threads, each range from the state and pool of the keys before it.

Stabilizers: per query the row log ``a_i`` of its features; per key ``r_j``; the far
sums of row ``i`` are kept at ``exp(a_i + b_i)`` with ``b_i`` the running maximum of
``r_j`` over the far keys row ``i`` reaches (no output depends on a later token); the
row's exact and far terms then share ``c_i = max(a_i + b_i, max_E s_ij)``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .. import _config

__all__ = [
    "hybrid_head",
    "stable_features",
    "far_groups",
    "exact_terms",
    "row_constants",
    "finish",
    "TopKeys",
]


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
        feat.kernel.exp_shifted(buf, top)
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
        r = np.where(positive, np.log(np.where(positive, peak, 1.0).astype(np.float64)), 0.0)
        r += feat.log_const
    return buf, r


def _exp(x, dtype):
    """``exp(x)`` in ``dtype`` for ``x <= 0`` (or ``-inf``): no overflow to guard."""
    x = np.asarray(x).astype(dtype)
    return np.exp(x, out=x)


def far_groups(feat, q, k, v1, mask, key_lo, key_hi, lag, chunk, group, rows=None,
               initial=None):  # fmt: skip
    """Causal far sums of one head, computed in groups of blocks of queries.

    Row ``i`` sums ``phi(q_i).phi(k_j) v1_j`` (``v1``: the values and a column of
    ones, whose sum is the normalizer) over the unmasked keys ``key_lo <= j < key_hi``
    with ``j <= i - lag``.  Yields per group ``(start, stop, psi_q, a, nd, b, parts)``:
    the query features ``psi_q`` and row logs ``a``, the sums ``nd`` at scale
    ``exp(-(a_i + b_i))``, ``b_i`` the running maximum of ``r_j`` over the keys row
    ``i`` reaches (``-inf`` where none), and ``parts = (lo, psi, r)``: the keys
    ``lo ..`` that entered the state in the group (``psi`` None where none).

    The features of a group's queries and keys are one product each; per block of
    ``chunk`` rows: the state's product, the masked product with the block's own far
    keys at ``exp(r_j - b_i)``, and the state's update.  The state's constant is the
    running maximum of the keys in it, so no output depends on a later token.

    ``rows``: ``(start, stop)``, the query rows to compute (all if None), with
    ``initial = (S, B)`` the state of the keys before ``start - lag + 1`` (empty if None).
    """
    dtype, width = feat.dtype, v1.shape[1]
    start, L = (0, q.shape[0]) if rows is None else rows
    S = np.zeros((feat.n_out, width), dtype=dtype)  # sum psi_j v1_j exp(r_j - B)
    B = -np.inf
    if initial is not None:
        S, B = initial[0].copy(), initial[1]
    # the state holds the keys key_lo .. nxt - 1 (after a group: those before its last
    # row's part, which ends at the key no row of the group reaches)
    nxt = key_lo if start == 0 else min(key_hi, max(key_lo, start - lag + 1))
    # row-major features: the top keys gather them by rows, and the shifted exp of
    # exp maps runs along rows (measured faster than the feature-major layout here)
    qbuf, kbuf = feat.empty(group, rows=True), feat.empty(group + 1, rows=True)
    # row i' of a full block reaches key j' of its part iff i' > j'
    strict = np.where(np.tri(chunk, chunk, -1, dtype=bool), 0.0, -np.inf)
    for gs in range(start, L, group):
        ge = min(L, gs + group)
        psi_q, a = stable_features(feat, q[gs:ge], qbuf[: ge - gs])
        klo, khi = nxt, min(key_hi, max(nxt, ge - lag + 1))
        rows = np.arange(gs, ge)
        b = np.full(ge - gs, B)
        if khi > klo:
            psi_k, r = stable_features(feat, k[klo:khi], kbuf[: khi - klo])
            if mask is not None and mask[klo:khi].any():
                hidden = mask[klo:khi]
                r = np.where(hidden, -np.inf, r)
                psi_k[hidden] = 0.0
            running = np.maximum(np.maximum.accumulate(r), B)
            last = rows - lag - klo  # each row's last reached key, from klo
            has = last >= 0
            b[has] = running[np.minimum(last[has], khi - klo - 1)]
        if klo == gs - lag + 1 and khi - klo == ge - gs and (ge - gs) % chunk == 0:
            nd, S, B = _full_group(psi_q, psi_k, r, b, v1[klo:khi], S, B, chunk)
            nxt = khi
            yield gs, ge, psi_q, a, nd, b, (klo, psi_k, r)
            continue
        nd = np.empty((ge - gs, width), dtype=dtype)
        for s in range(gs, ge, chunk):
            e = min(ge, s + chunk)
            rb, pq = b[s - gs : e - gs], psi_q[s - gs : e - gs]
            if np.isfinite(B):
                out = pq @ S
                out *= _exp(B - rb, dtype)[:, None]
            else:
                out = np.zeros((e - s, width), dtype=dtype)
            lo, hi = nxt, min(key_hi, max(nxt, e - lag + 1))
            if hi > lo:
                pk, rk = psi_k[lo - klo : hi - klo], r[lo - klo : hi - klo]
                D = rk[None, :] - np.where(np.isfinite(rb), rb, 0.0)[:, None]
                if lo == s - lag + 1 and e - s == chunk == hi - lo:
                    D += strict
                else:
                    D[(np.arange(s, e)[:, None] - lag) < np.arange(lo, hi)[None, :]] = -np.inf
                G = pq @ pk.T
                G *= _exp(D, dtype)
                out += G @ v1[lo:hi]
                top = float(rk.max())
                if top > -np.inf:
                    if top > B:
                        if np.isfinite(B):
                            S *= dtype.type(np.exp(B - top))
                        B = top
                    S += pk.T @ (v1[lo:hi] * _exp(rk - B, dtype)[:, None])
                nxt = hi
            nd[s - gs : e - gs] = out
        yield gs, ge, psi_q, a, nd, b, (klo, psi_k, r) if khi > klo else (klo, None, None)


def _full_group(psi_q, psi_k, r, b, v1, S, B, chunk):
    """:func:`far_groups` for a group of full blocks whose parts tile its keys: every
    block's products at once (batched), the states before the blocks by one prefix
    pass over the blocks' own states.  Returns ``(nd, S, B)``."""
    from .._numba.hybrid import lag_weights

    R, dtype = psi_q.shape[0], S.dtype
    n, m, width = R // chunk, S.shape[0], S.shape[1]
    pq = psi_q.reshape(n, chunk, m)
    pk = psi_k.reshape(n, chunk, m)
    rk = r.reshape(n, chunk)
    rb = b.reshape(n, chunk)
    vb = v1.reshape(n, chunk, width)
    # B_t: the state's constant before block t (the running maximum of its keys)
    ends = np.maximum(np.maximum.accumulate(rk.max(axis=1)), B)
    consts = np.concatenate([[B], ends])
    safe = np.where(np.isfinite(consts), consts, 0.0)
    own = np.matmul(pk.transpose(0, 2, 1), vb * _exp(rk - safe[1:, None], dtype)[:, :, None])
    states = np.empty((n + 1, m, width), dtype=dtype)
    states[0] = S
    for t in range(n):
        if not np.isfinite(consts[t]):
            states[t + 1] = own[t]
        elif consts[t] == consts[t + 1]:  # no key raised the maximum: one pass
            np.add(states[t], own[t], out=states[t + 1])
        else:
            np.multiply(states[t], dtype.type(np.exp(consts[t] - safe[t + 1])), out=states[t + 1])
            states[t + 1] += own[t]
    nd = np.matmul(pq, states[:n])
    finite = np.isfinite(rb)
    b_safe = np.where(finite, rb, 0.0)
    nd *= _exp(np.where(np.isfinite(consts[:n, None]), consts[:n, None] - b_safe, -np.inf),
               dtype)[:, :, None]  # fmt: skip
    G = np.matmul(pq, pk.transpose(0, 2, 1))
    lag_weights(G, np.ascontiguousarray(rk), b_safe)
    nd += np.matmul(G, vb)
    return nd.reshape(R, width), states[n], float(consts[n])


def _strided(X, start, n_blocks, step, width):
    """``n_blocks`` overlapping row windows ``X[start + t step : + width]`` (a view)."""
    X = X[start:]
    shape = (n_blocks, width) + X.shape[1:]
    return np.lib.stride_tricks.as_strided(
        X, shape, (step * X.strides[0],) + X.strides, writeable=False
    )


def _hide(logits, mask, keys):
    """``-inf`` on the columns of masked keys (``keys``: positions, or a (blocks,
    width) strided view of the mask)."""
    if mask is None:
        return logits
    hidden = mask[keys] if not isinstance(keys, tuple) else _strided(mask, *keys)
    if not hidden.any():
        return logits
    if hidden.ndim == 1:
        logits[:, hidden] = -np.inf
        return logits
    return np.where(hidden[:, None, :], -np.inf, logits)


def exact_terms(q, k, v1, mask, gamma, gs, ge, g, window, causal, chunk):
    """The exact keys of query rows ``gs .. ge - 1``: a list of ``(logits, values,
    row maxima or None)``, logits ``-inf`` where not allowed; 2-D ``(rows, keys)``, or
    3-D ``(blocks, chunk, band)`` for a run of full blocks whose bands are overlapping
    views of K and V."""
    terms = []
    from .._numba.hybrid import band_logits

    Lk, rows, gamma = k.shape[0], np.arange(gs, ge), q.dtype.type(gamma)
    n_glob = min(g, ge) if causal else g
    if n_glob:
        s = q[gs:ge] @ k[:n_glob].T
        s *= gamma
        if causal and gs < n_glob:
            s[rows[:, None] < np.arange(n_glob)[None, :]] = -np.inf
        terms.append((_hide(s, mask, np.arange(n_glob)), v1[:n_glob], None))
    if not window:
        return terms
    before, after = window - 1, (0 if causal else window - 1)
    lo, hi = max(g, gs - before), min(Lk, ge + after)
    R = ge - gs
    if R % chunk == 0 and hi > lo:
        n_blocks, width = R // chunk, chunk + before + after
        keys, values, hidden, base = k, v1, mask, lo
        if lo != gs - before or hi != ge + after:
            # a group at an edge: its band's keys padded to full bands, the pads hidden
            keys, values, hidden = _padded(k, v1, mask, gs - before, ge + after, lo, hi)
            base = 0
        bands = _strided(keys, base, n_blocks, chunk, width)
        s = q[gs:ge].reshape(n_blocks, chunk, -1) @ bands.transpose(0, 2, 1)
        s = np.ascontiguousarray(_hide(s, hidden, (base, n_blocks, chunk, width)))
        # row i' of a block and key j' of its band are i' + before - j' apart
        peak = np.empty(R)
        band_logits(s, gamma, before, window, causal, peak)
        terms.append((s, _strided(values, base, n_blocks, chunk, width), peak))
        return terms
    keys = np.arange(lo, hi)
    s = q[gs:ge] @ k[lo:hi].T
    s *= gamma
    s[~_near(rows[:, None] - keys[None, :], window, causal)] = -np.inf
    terms.append((_hide(s, mask, keys), v1[lo:hi], None))
    return terms


def _padded(k, v1, mask, start, stop, lo, hi):
    """Rows ``start .. stop - 1`` of ``k`` and ``v1`` with zeros outside ``lo .. hi - 1``,
    and where they are hidden (the pads, and the masked keys)."""
    size, inside = stop - start, slice(lo - start, hi - start)
    keys = np.zeros((size, k.shape[1]), dtype=k.dtype)
    keys[inside] = k[lo:hi]
    values = np.zeros((size, v1.shape[1]), dtype=v1.dtype)
    values[inside] = v1[lo:hi]
    hidden = np.ones(size, dtype=bool)
    hidden[inside] = False if mask is None else mask[lo:hi]
    return keys, values, hidden


def _near(delta, window, causal):
    """Whether a row and a key ``delta`` positions before it are in the window."""
    return ((delta >= 0) & (delta < window)) if causal else (np.abs(delta) < window)


def row_constants(nd, a, b, terms):
    """``(far_log, c)``: each row's far scale ``a + b`` and its constant ``c``, the
    largest of it and the row's exact logits (-inf where a row has no term)."""
    R = nd.shape[0]
    finite = np.isfinite(b)
    far_log = np.where(finite, a + np.where(finite, b, 0.0), -np.inf)
    c = far_log.copy()
    for s, _, peak in terms:
        if s.size:
            np.maximum(c, s.max(axis=-1).reshape(R) if peak is None else peak, out=c)
    return far_log, c


def finish(nd, far_log, c, terms, top=None):
    """The output rows from far sums ``nd`` (at ``exp(far_log)``), exact ``terms``, the
    rows' constants ``c`` (:func:`row_constants`) and the top keys' terms ``top``
    (:func:`top_terms`, already at the rows' constants)."""
    from .._numba.elementwise import exp_rows

    dtype, R = nd.dtype, nd.shape[0]
    c[~np.isfinite(c)] = 0.0
    nd *= _exp(far_log - c, dtype)[:, None]
    c_typed = c.astype(dtype)
    for s, values, _ in terms:
        if not s.size:
            continue
        if s.ndim == 3:
            exp_rows(s.reshape(R, -1), c_typed, False)
        else:
            s -= c_typed[:, None]
            with np.errstate(under="ignore"):
                np.exp(s, out=s)
        product = s @ values
        nd += product.reshape(R, -1)
    if top is not None:
        nd += top
    den = nd[:, -1]
    den[den == 0] = np.inf
    return nd[:, :-1] / den[:, None]


def top_terms(q_rows, k, v1, first, cols, psi, r, window, causal, top, gamma, psi_q, b,
              far_log, c):  # fmt: skip
    """The top keys' terms of the query rows ``q_rows`` (positions ``first ..``): per
    row its ``n_top`` keys of largest logit among its candidates, their exact terms
    minus their far estimates, at the rows' constants ``c`` (raised in place to the
    chosen logits).  ``cols``: the pooled keys in score order (best first; every
    row's candidates are its first allowed ones), ``psi`` and ``r`` their features
    and logs.  One product scores the pool for all the rows, one kernel chooses, one
    applies.  Returns the terms, or None where no key is pooled."""
    from .._numba.hybrid import apply_top, select_top

    if cols.size == 0:
        return None
    dtype = q_rows.dtype
    logits = q_rows @ k[cols].T
    logits *= dtype.type(gamma)
    rows = q_rows.shape[0]
    index = np.empty((rows, top.n_top), dtype=np.int64)
    chosen = np.empty((rows, top.n_top), dtype=dtype)
    visible = np.ones(cols.size, dtype=bool)
    select_top(logits, cols, visible, first, window, causal, top.n_candidates, index, chosen)
    np.maximum(c, chosen[:, 0], out=c)
    safe = np.where(np.isfinite(c), c, 0.0)
    far = np.exp(far_log - safe)  # 0 where no far key
    nd = np.zeros((rows, v1.shape[1]), dtype=dtype)
    # the pooled keys' rows, gathered once: the kernel reads them by rows
    apply_top(np.ascontiguousarray(psi_q), np.ascontiguousarray(psi),
              np.ascontiguousarray(r, dtype=np.float64), v1[cols], index, chosen, safe,
              np.where(np.isfinite(b), b, 0.0), far, nd)  # fmt: skip
    return nd


def with_ones(v):
    """``v`` with a column of ones: one product gives the sums and the normalizer."""
    v1 = np.empty((v.shape[0], v.shape[1] + 1), dtype=v.dtype)
    v1[:, :-1] = v
    v1[:, -1] = 1
    return v1


def hybrid_head(feat, q, k, v, mask, gamma, window, n_global, causal, top=None,
                prepared=None, chunk=None, group=None, workers=1):  # fmt: skip
    """The hybrid attention of one head, in ``v``'s dtype.

    ``prepared``: ``(qf, kf)``, the rows the feature map takes (its ``prepare``), or
    None when they are ``q`` and ``k``; logits always take ``q`` and ``k``.
    ``workers``: causal heads split over that many of favorkern's threads by ranges
    of rows (:func:`causal_ranges`).
    """
    chunk = _config.HYBRID_CHUNK_ROWS if chunk is None else chunk
    group = _config.HYBRID_GROUP_ROWS if group is None else group
    v1 = with_ones(v)
    qf, kf = (q, k) if prepared is None else prepared
    args = (feat, q, k, qf, kf, v1, mask, gamma, window, n_global, top, chunk, group)
    if not causal:
        return _bidirectional(*args)
    out = np.empty((q.shape[0], v1.shape[1] - 1), dtype=v1.dtype)
    ranges = causal_ranges(q.shape[0], group, workers)
    if len(ranges) == 1:
        return _causal(*args, out=out)
    from .common import run_parallel

    run_parallel([partial(_causal, *args, rows=r, out=out) for r in ranges], len(ranges))
    return out


def causal_ranges(L, group, workers):
    """Ranges of rows of a causal head, one per thread, whose costs balance: a range
    from row ``a`` first builds the state of the keys before it (a pass over them at
    about ``HYBRID_PREFIX_COST`` of a row's cost each), then runs its rows.  Ranges
    start at multiples of ``group`` and hold at least two groups; one range where
    that leaves fewer than two."""
    workers = min(workers, L // (2 * group))
    if workers <= 1:
        return [(0, L)]
    alpha = _config.HYBRID_PREFIX_COST
    starts = [0.0]
    for _ in range(workers - 1):  # equal costs: len_r + alpha start_r = len_0
        starts.append(starts[-1] + 1.0 - alpha * starts[-1])
    scale = L / (starts[-1] + 1.0 - alpha * starts[-1])
    edges = sorted({min(L, int(round(x * scale / group)) * group) for x in starts} | {L})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _causal(feat, q, k, qf, kf, v1, mask, gamma, window, n_global, top, chunk, group,
            rows=None, out=None):  # fmt: skip
    """Causal rows ``rows = (start, stop)`` (all if None) into ``out``: the keys
    before the range enter the far state and the candidate pool first."""
    L = q.shape[0]
    g = min(n_global, L)
    start, stop = (0, L) if rows is None else rows
    if out is None:
        out = np.empty((L, v1.shape[1] - 1), dtype=v1.dtype)
    initial = None
    if start > 0:
        initial = _state_of(feat, kf, v1, mask, g, max(g, start - window + 1), group)
    pool = _CausalPool(top, feat) if top is not None else None
    if pool is not None and start > 0:
        pool.prefill(kf, mask, g, start - window + 1, feat)
    for gs, ge, psi_q, a, nd, b, parts in far_groups(
        feat, qf, kf, v1, mask, g, L, window, chunk, group, rows=(start, stop),
        initial=initial,
    ):  # fmt: skip
        terms = exact_terms(q, k, v1, mask, gamma, gs, ge, g, window, True,
                            _config.HYBRID_BAND_ROWS)
        far_log, c = row_constants(nd, a, b, terms)
        extra = None
        if pool is not None:
            cols, psi, r = pool.update(*parts)
            extra = top_terms(q[gs:ge], k, v1, gs, cols, psi, r, window, True, top, gamma,
                              psi_q, b, far_log, c)  # fmt: skip
        out[gs:ge] = finish(nd, far_log, c, terms, extra)
    return out


class _CausalPool:
    """The best ``n_candidates`` keys by score among those that left every window, in
    score order (ties: the earlier key)."""

    def __init__(self, top, feat):
        self.top = top
        self.cols = np.empty(0, dtype=np.int64)
        self.psi = np.empty((0, feat.n_out), dtype=feat.dtype)
        self.r = np.empty(0)

    def prefill(self, kf, mask, lo, hi, feat):
        """The pool of the keys ``lo .. hi - 1`` (unmasked, of finite log), as the
        updates of a pass over them would leave it."""
        positions = np.arange(lo, max(lo, hi))
        if mask is not None:
            positions = positions[~mask[lo : max(lo, hi)]]
        scores = self.top.scores
        order = positions[np.lexsort((positions, -scores[positions]))]
        n, taken = self.top.n_candidates, 0
        while taken < order.size and self.cols.size < n:
            cols = order[taken : taken + n - self.cols.size]
            taken += cols.size
            psi, r = stable_features(feat, np.ascontiguousarray(kf[cols]),
                                     feat.empty(cols.size, rows=True))  # fmt: skip
            finite = np.isfinite(r)
            self.cols = np.concatenate([self.cols, cols[finite]])
            self.psi = np.concatenate([self.psi, psi[finite]])
            self.r = np.concatenate([self.r, r[finite]])

    def update(self, lo, psi_k, r):
        """The keys ``lo ..`` (features ``psi_k``, logs ``r``; -inf: masked) enter.
        Returns the keys any row of the group may take: the pool before them and
        those entering that beat its worst (a row's candidates, its best
        ``n_candidates`` far keys, are among these), in score order with their
        features and logs; the pool becomes their best ``n_candidates``."""
        cols, psi, rs = self.cols, self.psi, self.r
        if psi_k is not None:
            scores = self.top.scores
            enter = np.isfinite(r)
            if cols.size == self.top.n_candidates:
                # ties go to the earlier key: a later key must score strictly higher
                enter &= scores[lo : lo + r.size] > scores[cols[-1]]
            new = np.flatnonzero(enter)
            if new.size:
                cols = np.concatenate([cols, lo + new])
                order = np.lexsort((cols, -scores[cols]))
                cols = cols[order]
                psi = np.concatenate([psi, psi_k[new]])[order]
                rs = np.concatenate([rs, r[new]])[order]
                n = self.top.n_candidates
                self.cols, self.psi, self.r = cols[:n], psi[:n], rs[:n]
        return cols, psi, rs


def _bidirectional(feat, q, k, qf, kf, v1, mask, gamma, window, n_global, top, chunk, group):
    L, Lk = q.shape[0], k.shape[0]
    g = min(n_global, Lk)
    pool = _bidirectional_pool(top, kf, mask, g, window, feat) if top is not None else None
    out = np.empty((L, v1.shape[1] - 1), dtype=v1.dtype)
    for gs, ge, psi_q, a, nd, b in _bidirectional_far(feat, qf, kf, v1, mask, g, window, chunk,
                                                      group):  # fmt: skip
        terms = exact_terms(q, k, v1, mask, gamma, gs, ge, g, window, False,
                            _config.HYBRID_BAND_ROWS)
        far_log, c = row_constants(nd, a, b, terms)
        extra = None
        if pool is not None:
            extra = top_terms(q[gs:ge], k, v1, gs, *pool, window, False, top, gamma, psi_q, b,
                              far_log, c)  # fmt: skip
        out[gs:ge] = finish(nd, far_log, c, terms, extra)
    return out


def _bidirectional_far(feat, q, k, v1, mask, g, window, chunk, group):
    """Far sums of every query group (keys ``j >= g`` with ``|i - j| >= window``), in
    the order of the rows: ``(start, stop, psi_q, a, nd, b)``.

    One state of every key ``j >= g``, minus per row the estimates of its near keys
    (``|i - j| < window``, a band per block of queries): one pass over the keys for
    the state, then per group the query features, the state's product and the
    band's (Lq may differ from Lk only with ``window=0``).
    """
    L, Lk = q.shape[0], k.shape[0]
    S, B = _state_of(feat, k, v1, mask, g, Lk, group)
    buf = feat.empty(group, rows=True)
    near = window > 0 and np.isfinite(B)
    if near:
        pad = window - 1
        # values with pad zero rows each side: every band is a view
        v1p = np.zeros((Lk + 2 * pad, v1.shape[1]), dtype=v1.dtype)
        v1p[pad : pad + Lk] = v1
        kbuf = feat.empty(group + 2 * pad, rows=True)
    for s in range(0, L, group):
        e = min(L, s + group)
        psi_q, a = stable_features(feat, q[s:e], buf[: e - s])
        nd = psi_q @ S
        if near:
            _subtract_near(feat, k, mask, g, s, e, window, chunk, psi_q, nd, v1p, kbuf, B)
        yield s, e, psi_q, a, nd, np.full(e - s, B)


def _subtract_near(feat, k, mask, g, s, e, window, chunk, psi_q, nd, v1p, kbuf, B):
    """``nd_i -= sum_j phi(q_i).phi(k_j) e^{r_j - B} v1_j`` over the near keys ``j >= g``,
    ``|i - j| < window`` of rows ``s .. e - 1``: per block of ``chunk`` rows one
    product with its band of keys (a view of the group's key features, which pad
    positions outside the keys with zeros)."""
    from .._numba.hybrid import near_band

    pad, R, Lk = window - 1, e - s, k.shape[0]
    base = s - pad  # the position of the group's first band row
    psi = kbuf[: R + 2 * pad]
    r = np.full(R + 2 * pad, -np.inf)
    lo, hi = max(g, base), min(Lk, e + pad)
    psi[: max(0, lo - base)] = 0.0
    psi[max(0, hi - base) :] = 0.0
    if hi > lo:
        part, r_part = stable_features(feat, k[lo:hi], psi[lo - base : hi - base])
        if mask is not None and mask[lo:hi].any():
            r_part = np.where(mask[lo:hi], -np.inf, r_part)
            part[mask[lo:hi]] = 0.0
        r[lo - base : hi - base] = r_part
    n, rows = (R // chunk, chunk) if R % chunk == 0 else (1, R)
    width = rows + 2 * pad
    G = np.matmul(psi_q.reshape(n, rows, -1), _strided(psi, 0, n, rows, width).transpose(0, 2, 1))
    near_band(G, pad, window)
    # each key's factor e^{r_j - B} on its value row: one per key, not per pair
    values = v1p[s : s + R + 2 * pad] * _exp(r - B, v1p.dtype)[:, None]
    nd -= np.matmul(G, _strided(values, 0, n, rows, width)).reshape(R, -1)


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


def _bidirectional_pool(top, kf, mask, g, window, feat):
    """The keys any row may take, in score order (a row's candidates are its first
    ``n_candidates`` outside its window, so among the best ``n_candidates + 2 window - 1``),
    with their features and logs."""
    positions = np.arange(g, kf.shape[0])
    if mask is not None:
        positions = positions[~mask[g:]]
    scores = top.scores
    order = positions[np.lexsort((positions, -scores[positions]))]
    cols = order[: top.n_candidates + max(2 * window - 1, 0)].astype(np.int64)
    psi = feat.empty(cols.size, rows=True)
    psi, r = stable_features(feat, np.ascontiguousarray(kf[cols]), psi)
    return cols, psi, r

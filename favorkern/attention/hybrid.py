"""Hybrid attention: exact softmax on a local window (and global keys), random features elsewhere.

For query ``i`` the keys split into an exact set ``E_i`` (the ``window`` nearest
positions, and the first ``n_global`` keys) and the rest ``F_i``; the output is

    out_i = (sum_{E_i} e^{s_ij} v_j + sum_{F_i} phi(q_i).phi(k_j) v_j)
            / (sum_{E_i} e^{s_ij}     + sum_{F_i} phi(q_i).phi(k_j)),

``s_ij = gamma q_i.k_j``: exact and estimated kernel values renormalized together.
Pretrained heads put most of their mass on recent tokens and on the first token (an
"attention sink"); those weights become exact, and random features only carry the
long tail, where their relative error matters less.

Optionally ``E_i`` also holds query ``i``'s ``n_top`` keys of largest logit among a
fixed number of candidates: the far keys of largest score ``u.k_j`` for a direction
``u`` (the mean query of the head).  The score depends on the key alone, so the
candidate pool is kept in one streaming pass (causal: the best ``n_candidates``
keys that left the window so far) and a row's cost stays independent of ``L``; the
random-feature part subtracts the chosen keys' estimates, so no key counts twice.
This is the sparse-plus-low-rank split of Scatterbrain (Chen et al., 2021) with a
cheap key-only filter in place of its hashing, and exact top-k selection (Gupta et
al., 2021) among the filtered keys instead of among all keys.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from .. import _config
from .._parallel import blas_single_thread, n_threads
from .._validation import (
    check_attention_inputs,
    check_bool,
    check_float_array,
    check_int,
    check_logit_scale,
    check_option,
)
from ..feature_maps import check_constants, fit_constants, get_feature_map
from ..feature_maps._evaluate import projection_logits
from ..projections import PROJECTION_KINDS
from .common import heads, run_parallel
from .favor import DEFAULT_N_COMPONENTS, attention_features, resolve_projection
from .values import scaled_values, unscale

__all__ = ["hybrid_attention"]



def hybrid_attention(
    Q,
    K,
    V,
    *,
    window=64,
    n_global=0,
    n_top=0,
    n_candidates=None,
    candidate_query=None,
    causal=False,
    n_components=None,
    feature_map="positive",
    projection="orthogonal",
    gamma=None,
    projection_matrix=None,
    constants=None,
    random_state=None,
):
    """Softmax attention, exact on a local window and global keys, random features elsewhere.

    Parameters
    ----------
    Q : array-like of shape (..., L, d)
        Queries (leading dimensions broadcast as in :func:`favor_attention`).
    K : array-like of shape (..., L, d)
        Keys; query ``i`` and key ``i`` are the same position.
    V : array-like of shape (..., L, dv)
        Values.
    window : int, default=64
        Exact keys around each query: ``0 <= i - j < window`` (causal) or
        ``|i - j| < window`` (bidirectional).  0: no window.
    n_global : int, default=0
        The first ``n_global`` keys are exact for every query (causal: once
        reached), e.g. ``1`` for a head's attention sink at token 0.
    n_top : int, default=0
        Besides the window and the global keys, each query takes exactly the
        ``n_top`` keys of largest logit among its candidates.  0: none.
    n_candidates : int or None, default=None
        Candidates per query (with ``n_top > 0``; 256 if None): the ``n_candidates``
        keys outside the query's window and the global keys (causal: among its far
        keys ``j <= i - window``) of largest score ``candidate_query . k_j``.  A
        fixed budget, so time stays linear in ``L``.
    candidate_query : array-like of shape (d,) or (..., d), default=None
        The direction that scores keys for the candidate sets (with ``n_top > 0``),
        broadcast over the leading dimensions of Q, e.g. the mean query of each
        head on calibration text.  None: the mean of the head's queries, which
        depends on every token and so needs ``causal=False``.
    causal : bool, default=False
        Output ``i`` uses keys ``0..i`` only.
    n_components : int or None, default=None
        Output width of the feature map (256 if None).
    feature_map : str or FeatureMap, default="positive"
        A registered map (see :func:`favor_attention`).  Maps with data constants fit
        them per (batch, head) on all tokens unless ``constants`` is given, so they
        need ``causal=False`` or given constants.
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of the drawn projection.
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (n_projections, d), default=None
        Use these projections instead of drawing them.
    constants : dict or None, default=None
        Frozen data constants of the map (e.g. from ``fmap.fit`` on calibration
        queries and keys), used for every (batch, head).
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection.

    Returns
    -------
    out : ndarray of shape (..., L, dv)
        float32 if Q, K and V are float32, else float64.

    Notes
    -----
    Time ``O(L (m + window + n_global) (d + dv))``; memory ``O(chunk (chunk + window
    + n_global) + m dv)`` per head, independent of ``L``.  Computed in float64.  Top
    keys add ``O(L (n_candidates d + n_top (m + dv)))`` time and ``O((n_candidates +
    window) (chunk + m) + chunk n_top m)`` memory (causal: the block's own far keys
    are candidates too, up to ``chunk`` more).

    Top keys: row ``i``'s far keys are those it may attend to outside its window and
    the first ``n_global``.  Its candidates are the ``n_candidates`` far keys of
    largest ``candidate_query . k_j`` (ties: the earlier key), its top keys the
    ``n_top`` candidates of largest logit (exact ties broken arbitrarily, but the
    same in every run).  In causal mode both depend on keys ``j <= i`` only.  The
    estimate is exact when ``n_top`` and ``n_candidates`` cover every key.  How much
    the top keys gain depends on how well one direction ranks the keys a head's
    queries attend to; pretrained heads' queries share a large mean, which makes the
    mean query of calibration text a reasonable filter.

    Bidirectional: the key state over all non-global keys is accumulated first; each
    query block then subtracts the feature products of its window keys (in float64)
    and adds their exact values.  Causal: one pass over query blocks; the state holds
    the keys that are far for the whole block, the block's remaining far keys are a
    masked product.  Stabilizers: per query, the row maximum of its feature logits;
    per key, one constant (bidirectional: over all keys; causal: the running maximum
    over the far keys of row ``i``, so no output depends on a later token); exact and
    estimated terms of a row share one constant.  Rows whose normalizer vanishes are 0.

    With ``window=0`` and ``n_global=0`` this is :func:`favor_attention`'s estimate;
    with ``window >= L`` it is exact softmax attention.  Not an unbiased estimator
    of the output (no ratio estimator is), but every kernel value in it is either
    exact or an unbiased estimate.

    References
    ----------
    K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021 (local
    heads in its public implementations); K. Choromanski et al., "Hybrid Random
    Features", ICLR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import hybrid_attention, softmax_attention, favor_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 300, 16))
    >>> V = rng.normal(size=(300, 8))
    >>> exact = softmax_attention(Q, K, V, causal=True)
    >>> hybrid = hybrid_attention(Q, K, V, window=32, n_global=1, causal=True,
    ...                           n_components=64, random_state=0)
    >>> favor = favor_attention(Q, K, V, causal=True, n_components=64, random_state=0)
    >>> err = lambda A: float(np.median(np.linalg.norm(A - exact, axis=1)))
    >>> bool(err(hybrid) < err(favor))
    True
    >>> full = hybrid_attention(Q, K, V, window=300, causal=True, random_state=0)
    >>> bool(np.allclose(full, exact))
    True

    A head whose queries lean on a few distant keys: the top keys make them exact.

    >>> Q[:, 0] += 2.0
    >>> K[::37, 0] += 6.0
    >>> exact = softmax_attention(Q, K, V, causal=True)
    >>> u = np.eye(16)[0]  # scores keys by their first coordinate
    >>> plain = hybrid_attention(Q, K, V, window=16, causal=True, n_components=64,
    ...                          random_state=0)
    >>> top = hybrid_attention(Q, K, V, window=16, n_top=8, n_candidates=32,
    ...                        candidate_query=u, causal=True, n_components=64,
    ...                        random_state=0)
    >>> bool(err(top) < 0.5 * err(plain))
    True
    """
    causal = check_bool(causal, "causal")
    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal)
    window = check_int(window, "window", min_value=0)
    n_global = check_int(n_global, "n_global", min_value=0)
    if (window or n_global) and Q.shape[-2] != K.shape[-2]:
        raise ValueError(
            "hybrid_attention aligns query i with key i: Q and K must have the same length "
            f"when window > 0 or n_global > 0, got {Q.shape[-2]} and {K.shape[-2]}"
        )
    d = Q.shape[-1]
    fmap = get_feature_map(feature_map)
    gamma = check_logit_scale(gamma, d)
    if projection_matrix is None:
        check_option(projection, "projection", PROJECTION_KINDS)
    proj = resolve_projection(
        fmap, projection_matrix,
        DEFAULT_N_COMPONENTS if n_components is None and projection_matrix is None
        else n_components,
        d, projection, random_state,
    )  # fmt: skip
    if fmap.data_constants and constants is None and causal:
        raise ValueError(
            f"feature_map={fmap.name!r} fits its constants on all tokens of Q and K, so "
            "outputs would depend on later tokens: pass fitted constants or causal=False"
        )
    frozen = None if constants is None else check_constants(fmap, constants, d)
    directions = _check_top(n_top, n_candidates, candidate_query, causal, batch, d)
    top_keys = None
    V, exponents = scaled_values(V, K.shape[-2] * proj.n_components)
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    tasks = []
    for q, k, v, _, idx in heads(Q, K, V, mask, batch):
        if directions is not None:
            u = directions[idx] if directions.ndim > 1 else directions
            top_keys = (n_top, 256 if n_candidates is None else n_candidates, u)
        tasks.append(partial(_one_head, q, k, v, idx, out, fmap, proj, gamma, frozen, window,
                             n_global, causal, top_keys))  # fmt: skip
    # Small products: threaded BLAS costs more than it gains (and much more under load);
    # the heads run on favorkern's threads instead, each writing its own rows of out.
    with blas_single_thread():
        run_parallel(tasks, n_threads() if len(tasks) > 1 else 1)
    return unscale(out, exponents)


def _check_top(n_top, n_candidates, candidate_query, causal, batch, d):
    """Validate the top-k options; the scoring directions (batch + (d,), or (d,)) or None."""
    n_top = check_int(n_top, "n_top", min_value=0)
    if n_top == 0:
        for name, value in (("n_candidates", n_candidates), ("candidate_query", candidate_query)):
            if value is not None:
                raise ValueError(f"{name} is used only with n_top > 0, got n_top=0")
        return None
    if n_candidates is not None:
        n_candidates = check_int(n_candidates, "n_candidates", min_value=1)
        if n_candidates < n_top:
            raise ValueError(f"n_candidates must be at least n_top={n_top}, got {n_candidates}")
    if candidate_query is None:
        if causal:
            raise ValueError(
                "n_top > 0 with causal=True needs candidate_query (e.g. the mean query of "
                "calibration text): the default, the mean of all queries, would make "
                "outputs depend on later tokens"
            )
        return _MEAN_QUERY
    u = check_float_array(candidate_query, "candidate_query", min_ndim=1, dtype=np.float64)
    if u.shape[-1] != d:
        raise ValueError(
            f"candidate_query must have the feature dimension d = {d} of Q, got shape {u.shape}"
        )
    if u.ndim == 1:
        return u
    try:
        return np.ascontiguousarray(np.broadcast_to(u, batch + (d,)))
    except ValueError:
        raise ValueError(
            f"the leading dimensions of candidate_query {u.shape[:-1]} do not broadcast to "
            f"those of Q, K and V {batch}"
        ) from None


# Marker: score keys by the mean of the head's own queries.
_MEAN_QUERY = np.empty(0)


def _one_head(q, k, v, idx, out, fmap, proj, gamma, frozen, window, n_global, causal, top_keys):
    """One (batch, head): constants, features, then the causal or bidirectional pass."""
    q64, k64, v64 = (np.asarray(X, dtype=np.float64) for X in (q, k, v))
    head_constants = frozen
    if head_constants is None:
        head_constants = check_constants(
            fmap,
            fit_constants(fmap, q64, k64, input_scale=math.sqrt(gamma), projection=proj.matrix)
            if fmap.data_constants else {}
        )  # fmt: skip
    features = attention_features(fmap, proj, gamma, np.float64, head_constants)
    qf = fmap.prepare(q64, "query", head_constants)
    kf = fmap.prepare(k64, "key", head_constants)
    if top_keys is not None and top_keys[2].size == 0:
        top_keys = (top_keys[0], top_keys[1], q64.mean(axis=0))
    run = _causal_head if causal else _bidirectional_head
    out[idx] = run(q64, k64, v64, qf, kf, features.spec, gamma, window, n_global, top_keys)


def _logits(X, spec):
    """Feature logits ``w.x' - a|x'|^2 + log s`` (float64), shape (rows, n_out)."""
    out = np.empty((X.shape[0], spec.weights.shape[0]))
    projection_logits(np.ascontiguousarray(X), out, spec, np.ascontiguousarray(spec.weights.T))
    return out


def _finish(num_far, den_far, far_log, exact_logits, exact_mask, v_exact, chosen=None):
    """Combine far (at scale ``exp(-far_log)``) and exact terms per row; normalize.

    ``chosen``: ``(logits, valid, values)`` of each row's own exact keys, shapes
    (rows, n), (rows, n) and (rows, n, dv), or None.
    """
    with np.errstate(invalid="ignore"):
        s = np.where(exact_mask, exact_logits, -np.inf)
    row_max = s.max(axis=1) if s.shape[1] else np.full(s.shape[0], -np.inf)
    if chosen is not None:
        t = np.where(chosen[1], chosen[0], -np.inf)
        row_max = np.maximum(row_max, t.max(axis=1))
    c = np.maximum(far_log, row_max)
    c = np.where(np.isfinite(c), c, 0.0)
    with np.errstate(under="ignore"):
        far_scale = np.exp(far_log - c)
        weights = np.exp(s - c[:, None])
    num = num_far * far_scale[:, None] + weights @ v_exact
    den = den_far * far_scale + weights.sum(axis=1)
    if chosen is not None:
        with np.errstate(under="ignore"):
            tw = np.exp(t - c[:, None])
        num += _row_combination(tw, chosen[2])
        den += tw.sum(axis=1)
    den[den <= 0] = np.inf
    return num / den[:, None]


def _row_combination(weights, values):
    """``sum_n weights[r, n] values[r, n, :]`` per row (batched products)."""
    return np.matmul(weights[:, np.newaxis, :], values)[:, 0, :]


def _rank_order(scores, positions):
    """``positions`` sorted by score, largest first, ties by position (a total order)."""
    return positions[np.lexsort((positions, -scores[positions]))]


def _choose(q_rows, k, cols, allowed, by_score, n_top, n_candidates, gamma):
    """Each row's ``n_top`` keys of largest logit among its candidates.

    ``cols``: key positions (columns); ``allowed`` (rows, cols): the keys a row may
    take; ``by_score``: column indices in candidate-score order.  A row's candidates
    are its first ``n_candidates`` allowed columns in that order.  Returns column
    indices (rows, n), whether each is taken, and the logits of the taken keys.
    """
    in_order = allowed[:, by_score]
    candidate = np.zeros_like(allowed)
    candidate[:, by_score] = in_order & (np.cumsum(in_order, axis=1) <= n_candidates)
    logits = gamma * (q_rows @ k[cols].T)
    masked = np.where(candidate, logits, -np.inf)
    n_cols = cols.size
    if n_cols > n_top:
        index = np.argpartition(masked, n_cols - n_top, axis=1)[:, n_cols - n_top :]
    else:
        index = np.broadcast_to(np.arange(n_cols), (q_rows.shape[0], n_cols))
    taken = np.take_along_axis(candidate, index, axis=1)
    return index, taken, np.take_along_axis(logits, index, axis=1)


def _bidirectional_head(q, k, v, qf, kf, spec, gamma, window, n_global, top_keys=None):
    L, dv = q.shape[0], v.shape[1]
    n_global = min(n_global, k.shape[0])
    out = np.empty((L, dv))
    # Key state over all non-global keys at one shared constant b (rescaled as it grows).
    S = np.zeros((spec.weights.shape[0], dv))
    z = np.zeros(spec.weights.shape[0])
    b = -np.inf
    for start in range(n_global, k.shape[0], _config.HYBRID_CHUNK_ROWS):
        stop = min(k.shape[0], start + _config.HYBRID_CHUNK_ROWS)
        F = _logits(kf[start:stop], spec)
        top = float(F.max())
        if top > b:
            if np.isfinite(b):
                S *= math.exp(b - top)
                z *= math.exp(b - top)
            b = top
        phi = np.exp(F - b)
        S += phi.T @ v[start:stop]
        z += phi.sum(axis=0)
    reach = max(window - 1, 0)
    if top_keys is not None:
        n_top, n_candidates, u = top_keys
        # A row's candidates are its first n_candidates non-window keys in score
        # order, so among the best n_candidates + 2 window - 1 keys of all.
        pool = _rank_order(k @ u, np.arange(n_global, k.shape[0]))
        pool = pool[: n_candidates + max(2 * window - 1, 0)]
        by_score = np.arange(pool.size)
        phi_pool = np.exp(_logits(kf[pool], spec) - b) if pool.size else None
    for start in range(0, L, _config.HYBRID_CHUNK_ROWS):
        stop = min(L, start + _config.HYBRID_CHUNK_ROWS)
        Fq = _logits(qf[start:stop], spec)
        a = Fq.max(axis=1)
        phi_q = np.exp(Fq - a[:, None])
        if np.isfinite(b):
            num, den = phi_q @ S, phi_q @ z
        else:
            num, den = np.zeros((stop - start, dv)), np.zeros(stop - start)
        rows = np.arange(start, stop)
        lo, hi = max(n_global, start - reach), min(k.shape[0], stop + reach)
        band = np.arange(lo, hi)
        in_window = np.abs(rows[:, None] - band[None, :]) < window
        if window and band.size:
            # Remove the window keys' estimates from the far part (float64, all terms >= 0).
            phi_k = np.exp(_logits(kf[lo:hi], spec) - b)
            G = (phi_q @ phi_k.T) * in_window
            num -= G @ v[lo:hi]
            den -= G.sum(axis=1)
            np.maximum(den, 0.0, out=den)
        chosen = None
        if top_keys is not None and pool.size:
            allowed = np.abs(rows[:, None] - pool[None, :]) >= window
            index, taken, chosen_logits = _choose(
                q[start:stop], k, pool, allowed, by_score, n_top, n_candidates, gamma
            )
            chosen_v = v[pool[index]]
            # Remove the chosen keys' estimates, as for the window.
            G = np.take_along_axis(phi_q @ phi_pool.T, index, axis=1) * taken
            num -= _row_combination(G, chosen_v)
            den -= G.sum(axis=1)
            np.maximum(den, 0.0, out=den)
            chosen = (chosen_logits, taken, chosen_v)
        keys = np.concatenate([np.arange(n_global), band])
        exact_mask = np.concatenate(
            [np.ones((stop - start, n_global), dtype=bool), in_window], axis=1
        )
        logits = gamma * (q[start:stop] @ k[keys].T)
        out[start:stop] = _finish(num, den, a + b, logits, exact_mask, v[keys], chosen)
    return out


def _causal_head(q, k, v, qf, kf, spec, gamma, window, n_global, top_keys=None):
    L, dv = q.shape[0], v.shape[1]
    n_global = min(n_global, L)
    n_out = spec.weights.shape[0]
    out = np.empty((L, dv))
    # State: far keys of the whole block (n_global <= j <= start - window), at constant B.
    S, z, B = np.zeros((n_out, dv)), np.zeros(n_out), -np.inf
    lag = max(window, 1)  # row i's far keys: j <= i - lag (window 0: all keys j <= i)
    next_key = n_global
    if top_keys is not None:
        n_top, n_candidates, u = top_keys
        scores = k @ u
        # Candidate pool: the best n_candidates state keys by score (position order),
        # with their feature logits; a row's candidates are the best n_candidates of
        # the pool and the block's far keys it reaches.
        pool = np.zeros(0, dtype=int)
        pool_phi, pool_kmax = np.zeros((0, n_out)), np.zeros(0)  # features / exp(max), max
    for start in range(0, L, _config.HYBRID_CHUNK_ROWS):
        stop = min(L, start + _config.HYBRID_CHUNK_ROWS)
        rows = np.arange(start, stop)
        Fq = _logits(qf[start:stop], spec)
        a = Fq.max(axis=1)
        phi_q = np.exp(Fq - a[:, None])
        # The block's own far keys: next_key <= j <= stop - 1 - lag (window 0: j <= i).
        p_lo, p_hi = next_key, max(next_key, stop - lag + (1 if window == 0 else 0))
        p_hi = min(p_hi, L)
        part = np.arange(p_lo, p_hi)
        Fk = _logits(kf[p_lo:p_hi], spec)
        kmax = Fk.max(axis=1) if part.size else np.zeros(0)
        phi_k = np.exp(Fk - kmax[:, None])
        reach = rows[:, None] - (lag if window else 0) >= part[None, :]
        # b_i: running maximum over row i's far keys (state, then the block's part).
        prefix = np.maximum.accumulate(kmax) if part.size else kmax
        n_reach = reach.sum(axis=1)
        b_rows = np.full(stop - start, B)
        has = n_reach > 0
        b_rows[has] = np.maximum(B, prefix[n_reach[has] - 1])
        num, den = np.zeros((stop - start, dv)), np.zeros(stop - start)
        ok = np.isfinite(b_rows)
        if np.isfinite(B):
            scale = np.exp(np.where(ok, B - b_rows, -np.inf))
            num += (phi_q @ S) * scale[:, None]
            den += (phi_q @ z) * scale
        if part.size:
            b_safe = np.where(ok, b_rows, 0.0)
            with np.errstate(invalid="ignore"):
                pair = np.where(reach, np.exp(kmax[None, :] - b_safe[:, None]), 0.0)
            G = (phi_q @ phi_k.T) * pair
            num += G @ v[p_lo:p_hi]
            den += G.sum(axis=1)
        chosen = None
        if top_keys is not None and pool.size + part.size:
            cols = np.concatenate([pool, part])
            allowed = np.concatenate([np.ones((stop - start, pool.size), dtype=bool), reach], 1)
            by_score = np.lexsort((cols, -scores[cols]))
            index, taken, chosen_logits = _choose(
                q[start:stop], k, cols, allowed, by_score, n_top, n_candidates, gamma
            )
            phi_cols = np.concatenate([pool_phi, phi_k])
            kmax_cols = np.concatenate([pool_kmax, kmax])
            b_safe = np.where(ok, b_rows, 0.0)
            # Remove the chosen keys' estimates (state or block part) at row scale b_i.
            with np.errstate(invalid="ignore", under="ignore"):
                scale = np.exp(np.where(taken, kmax_cols[index] - b_safe[:, None], -np.inf))
            # one product with every column, then the chosen ones: faster than gathering
            # each row's (n, m) features
            G = np.take_along_axis(phi_q @ phi_cols.T, index, axis=1) * scale
            chosen_v = v[cols[index]]
            num -= _row_combination(G, chosen_v)
            den -= G.sum(axis=1)
            np.maximum(den, 0.0, out=den)
            chosen = (chosen_logits, taken, chosen_v)
        # Exact keys: globals j < n_global (j <= i) and the window (i - window < j <= i).
        lo = max(n_global, start - window + 1)
        band = np.arange(lo, stop) if window else np.zeros(0, dtype=int)
        keys = np.concatenate([np.arange(n_global), band]).astype(int)
        delta = rows[:, None] - keys[None, :]
        exact_mask = (delta >= 0) & ((keys[None, :] < n_global) | (delta < window))
        logits = gamma * (q[start:stop] @ k[keys].T)
        far_log = np.where(ok, a + np.where(ok, b_rows, 0.0), -np.inf)
        out[start:stop] = _finish(num, den, far_log, logits, exact_mask, v[keys], chosen)
        # Move the block's far keys into the state (and the best into the pool).
        if top_keys is not None and part.size:
            merged = np.concatenate([pool, part])
            keep = np.sort(np.lexsort((merged, -scores[merged]))[:n_candidates])
            pool = merged[keep]
            pool_phi = np.concatenate([pool_phi, phi_k])[keep]
            pool_kmax = np.concatenate([pool_kmax, kmax])[keep]
        if part.size:
            top = float(kmax.max())
            if top > B:
                if np.isfinite(B):
                    S *= math.exp(B - top)
                    z *= math.exp(B - top)
                B = top
            phi_state = phi_k * np.exp(kmax - B)[:, None]
            S += phi_state.T @ v[p_lo:p_hi]
            z += phi_state.sum(axis=0)
            next_key = p_hi
    return out

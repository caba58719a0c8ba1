"""Slow, obviously correct numpy oracles for the fast kernels (float64 throughout)."""

from __future__ import annotations

import numpy as np


def softmax_attention(Q, K, V, *, causal=False, gamma=None, key_padding_mask=None):
    """Exact attention of one head: full L x L score matrix, explicit loops over rows."""
    Q, K, V = (np.asarray(X, dtype=np.float64) for X in (Q, K, V))
    gamma = 1.0 / np.sqrt(Q.shape[1]) if gamma is None else gamma
    out = np.zeros((Q.shape[0], V.shape[1]))
    for i in range(Q.shape[0]):
        keep = np.ones(K.shape[0], dtype=bool)
        if key_padding_mask is not None:
            keep &= ~np.asarray(key_padding_mask)
        if causal:
            keep[i + 1 :] = False
        if keep.any():
            logits = gamma * K[keep] @ Q[i]
            weights = np.exp(logits - logits.max())
            out[i] = weights @ V[keep] / weights.sum()
    return out


#: The data-free maps of the registry that favor_features knows.
FEATURE_MAPS = ("positive", "hyperbolic", "trigonometric", "relu")


def favor_features(X, W, feature_map, gamma):
    """Materialized, unstabilized phi(X) for a projection W (m x d), x' = sqrt(gamma) x."""
    X = np.asarray(X, dtype=np.float64) * np.sqrt(gamma)
    U = X @ np.asarray(W, dtype=np.float64).T
    m = W.shape[0]
    sq = 0.5 * np.sum(X * X, axis=1, keepdims=True)
    if feature_map == "positive":
        return np.exp(U - sq) / np.sqrt(m)
    if feature_map == "hyperbolic":
        return np.hstack([np.exp(U - sq), np.exp(-U - sq)]) / np.sqrt(2 * m)
    if feature_map == "trigonometric":
        return np.exp(sq) * np.hstack([np.cos(U), np.sin(U)]) / np.sqrt(m)
    if feature_map == "relu":
        return np.maximum(U, 0.0) / np.sqrt(m)
    raise ValueError(feature_map)


def favor_attention(
    Q, K, V, W, *, feature_map="positive", causal=False, gamma=None, key_padding_mask=None
):
    """FAVOR attention of one head from materialized features (Performer eq. 4 and 11).

    Causal mode builds the explicit L x m x dv prefix sums.  Rows with a zero
    normalizer are 0.
    """
    Q, K, V = (np.asarray(X, dtype=np.float64) for X in (Q, K, V))
    gamma = 1.0 / np.sqrt(Q.shape[1]) if gamma is None else gamma
    phi_q = favor_features(Q, W, feature_map, gamma)
    phi_k = favor_features(K, W, feature_map, gamma)
    if key_padding_mask is not None:
        phi_k[np.asarray(key_padding_mask)] = 0.0
    if causal:
        prefix = np.cumsum(phi_k[:, :, None] * V[:, None, :], axis=0)  # L x m x dv
        prefix_norm = np.cumsum(phi_k, axis=0)
        numerator = np.einsum("lf,lfc->lc", phi_q, prefix)
        denominator = np.einsum("lf,lf->l", phi_q, prefix_norm)
    else:
        numerator = phi_q @ (phi_k.T @ V)
        denominator = phi_q @ phi_k.sum(axis=0)
    out = np.zeros_like(numerator)
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero, None]
    return out


def width(feature_map, n_projections):
    """Output width (``n_components``) of ``n_projections`` projections of a map."""
    return (2 if feature_map in ("hyperbolic", "trigonometric") else 1) * n_projections


def hybrid_attention(Q, K, V, phi_q, phi_k, *, window, n_global=0, causal=False, gamma=None):
    """Hybrid attention of one head from materialized features, one row at a time.

    Row ``i``: exact ``exp(gamma q_i.k_j)`` for keys in the window (``0 <= i - j <
    window`` causal, ``|i - j| < window`` bidirectional) or among the first
    ``n_global``; ``phi_q[i] . phi_k[j]`` for the other allowed keys; one
    normalization over both.
    """
    Q, K, V, phi_q, phi_k = (np.asarray(X, dtype=np.float64) for X in (Q, K, V, phi_q, phi_k))
    gamma = 1.0 / np.sqrt(Q.shape[1]) if gamma is None else gamma
    L = Q.shape[0]
    out = np.zeros((L, V.shape[1]))
    for i in range(L):
        weights = np.zeros(K.shape[0])
        for j in range(K.shape[0]):
            if causal and j > i:
                continue
            near = (0 <= i - j < window) if causal else abs(i - j) < window
            if near or j < n_global:
                weights[j] = np.exp(gamma * Q[i] @ K[j])
            else:
                weights[j] = phi_q[i] @ phi_k[j]
        if weights.sum() != 0:
            out[i] = weights @ V / weights.sum()
    return out


def _sym_sqrt(M):
    values, vectors = np.linalg.eigh(0.5 * (M + M.T))
    return (vectors * np.sqrt(values)) @ vectors.T


def derf_full_matrices(constants, gamma, kind):
    """The dense-exponential parameters ``(A, B1, B2)`` (FAVOR#'s full-matrix form) of
    fitted SDERF/ADERF/SADERF constants, for unscaled inputs (``x' = sqrt(gamma) x``).

    ``A = R^T diag(a) R`` (a genuinely dense matrix), ``B_k = (I - 4A)^(1/2) T_k
    sqrt(gamma)``, with ``T_k`` the query/key transforms (identity for SDERF, the
    ``psi`` rescaling for SADERF, where ``A = a I``).
    """
    if kind == "saderf":
        psi = np.asarray(constants["psi"], dtype=np.float64)
        d = psi.size
        A = float(constants["A"]) * np.eye(d)
        Tq, Tk = np.diag(psi), np.diag(1.0 / psi)
    else:
        R = np.asarray(constants["rotation"], dtype=np.float64)
        d = R.shape[0]
        A = R.T @ np.diag(np.asarray(constants["A"], dtype=np.float64)) @ R
        Tq = np.asarray(constants.get("query_transform", np.eye(d)), dtype=np.float64)
        Tk = np.asarray(constants.get("key_transform", np.eye(d)), dtype=np.float64)
    root = _sym_sqrt(np.eye(d) - 4.0 * A)
    return A, root @ Tq * np.sqrt(gamma), root @ Tk * np.sqrt(gamma)


def derf_feature(w, x, A, B):
    """``f(w, x) = D exp(w^T A w + w^T B x + x^T C x)``, ``C = -B^T (I-4A)^-1 B / 2``,
    ``D = det(I - 4A)^(1/4)``: rows of ``w`` (n, d), one input ``x`` (d,)."""
    d = A.shape[0]
    inv = np.linalg.inv(np.eye(d) - 4.0 * A)
    C = -0.5 * B.T @ inv @ B
    D = np.linalg.det(np.eye(d) - 4.0 * A) ** 0.25
    return D * np.exp(np.einsum("ni,ij,nj->n", w, A, w) + w @ (B @ x) + x @ C @ x)


def derf_log_mse_paper(x, y, A, B1, B2, m):
    """log MSE of ``m`` iid rows from the printed FAVOR# variance (:ref:`theory-favor-sharp`):
    ``D^4 det(I-8A)^(-1/2) exp(2x^T(C1 + B1^T(I-8A)^-1 B1)x + 2y^T(...)y
    + 4x^T B1^T(I-8A)^-1 B2 y) - SM^2``, the exponent kept in log space."""
    d = A.shape[0]
    I = np.eye(d)
    inv4, inv8 = np.linalg.inv(I - 4.0 * A), np.linalg.inv(I - 8.0 * A)
    C1, C2 = -0.5 * B1.T @ inv4 @ B1, -0.5 * B2.T @ inv4 @ B2
    log_d4 = np.linalg.slogdet(I - 4.0 * A)[1]
    log_det8 = np.linalg.slogdet(I - 8.0 * A)[1]
    out = []
    for xi, yi in zip(np.atleast_2d(x), np.atleast_2d(y), strict=True):
        log_second = (
            log_d4
            - 0.5 * log_det8
            + 2 * xi @ (C1 + B1.T @ inv8 @ B1) @ xi
            + 2 * yi @ (C2 + B2.T @ inv8 @ B2) @ yi
            + 4 * xi @ B1.T @ inv8 @ B2 @ yi
        )
        log_kernel = xi @ B1.T @ inv4 @ B2 @ yi  # = gamma x.y when B1^T (I-4A)^-1 B2 = gamma I
        out.append(log_second + np.log(-np.expm1(2 * log_kernel - log_second)) - np.log(m))
    return np.array(out)


def gaussian_expectation(fn, d, n_nodes=48):
    """``E[fn(w)]``, ``w ~ N(0, I_d)``, by a tensor grid of Gauss-Hermite nodes.

    ``fn`` maps an ``(n, d)`` array of nodes to ``n`` values.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / np.sqrt(2.0 * np.pi)
    grids = np.meshgrid(*([nodes] * d), indexing="ij")
    w = np.stack([g.ravel() for g in grids], axis=1)
    wts = np.ones(len(w))
    for axis_weights in np.meshgrid(*([weights] * d), indexing="ij"):
        wts = wts * axis_weights.ravel()
    return float(wts @ fn(w))


def hybrid_top_attention(
    Q, K, V, phi_q, phi_k, *, window, n_global=0, n_top, n_candidates, candidate_query=None,
    causal=False, gamma=None,
):  # fmt: skip
    """:func:`hybrid_attention` plus each row's ``n_top`` exact keys, one row at a time.

    Row ``i``'s far keys are the allowed keys outside its window and the first
    ``n_global``; its candidates the ``n_candidates`` far keys of largest
    ``candidate_query . k_j`` (ties: the earlier key; ``candidate_query`` None: the
    mean query); of these, the ``n_top`` of largest logit are exact as well.
    """
    Q, K, V, phi_q, phi_k = (np.asarray(X, dtype=np.float64) for X in (Q, K, V, phi_q, phi_k))
    gamma = 1.0 / np.sqrt(Q.shape[1]) if gamma is None else gamma
    u = Q.mean(axis=0) if candidate_query is None else np.asarray(candidate_query, float)
    scores = K @ u
    out = np.zeros((Q.shape[0], V.shape[1]))
    for i in range(Q.shape[0]):
        exact = np.zeros(K.shape[0], dtype=bool)
        far = []
        for j in range(K.shape[0]):
            if causal and j > i:
                continue
            near = (0 <= i - j < window) if causal else abs(i - j) < window
            if near or j < n_global:
                exact[j] = True
            else:
                far.append(j)
        far.sort(key=lambda j: (-scores[j], j))
        candidates = far[:n_candidates]
        candidates.sort(key=lambda j: -gamma * Q[i] @ K[j])
        exact[candidates[:n_top]] = True
        weights = np.zeros(K.shape[0])
        for j in range(K.shape[0]):
            if causal and j > i:
                continue
            weights[j] = np.exp(gamma * Q[i] @ K[j]) if exact[j] else phi_q[i] @ phi_k[j]
        if weights.sum() != 0:
            out[i] = weights @ V / weights.sum()
    return out


def fitted_map_features(name, Q, K, W, gamma):
    """A data map's constants fitted on ``Q, K`` and its materialized features of both.

    Returns ``(constants, phi_q, phi_k)`` from favorkern's own spec: the input of the
    hybrid oracles for maps whose features depend on fitted constants.
    """
    import math

    from favorkern.feature_maps import apply_feature_map, get_feature_map

    fmap = get_feature_map(name)
    constants = fmap.fit(Q, K, input_scale=math.sqrt(gamma))
    spec = fmap.spec(W, n_components=W.shape[0], input_scale=math.sqrt(gamma), constants=constants)
    phi_q = apply_feature_map(fmap.prepare(Q, "query", constants), spec)
    phi_k = apply_feature_map(fmap.prepare(K, "key", constants), spec)
    return constants, phi_q, phi_k


def map_features(feature_map, Q, K, W, gamma, *, random_state=0, constants=None):
    """Materialized ``phi(Q), phi(K)`` of a registered map (its own features, unstabilized).

    The map's random draws besides ``W`` come from ``random_state`` as in
    ``favorkern.attention.favor.resolve_projection``; data maps fit their constants on
    ``Q, K`` unless given.  Returns ``(phi_q, phi_k, constants)``.
    """
    import math

    from favorkern.attention.plan import resolve_projection
    from favorkern.feature_maps import apply_feature_map, get_feature_map

    fmap = get_feature_map(feature_map)
    Q, K, W = (np.asarray(X, dtype=np.float64) for X in (Q, K, W))
    proj = resolve_projection(fmap, W, None, Q.shape[1], "orthogonal", random_state)
    if constants is None and fmap.data_constants:
        constants = fmap.fit(Q, K, input_scale=math.sqrt(gamma), projection=W)
    spec = fmap.spec(
        W, n_components=proj.n_components, input_scale=math.sqrt(gamma), kernel="softmax",
        constants=constants, draws=proj.draws,
    )  # fmt: skip
    phi_q = apply_feature_map(fmap.prepare(Q, "query", constants), spec)
    phi_k = apply_feature_map(fmap.prepare(K, "key", constants), spec)
    return phi_q, phi_k, constants


def naive_hybrid_attention(
    Q, K, V, phi_q, phi_k, *, window, n_global=0, n_top=0, n_candidates=None,
    candidate_query=None, causal=False, gamma=None, key_padding_mask=None,
):  # fmt: skip
    """Hybrid attention of one head, one row at a time, from the map's own features.

    Row ``i`` sees the keys allowed to it (``j <= i`` if causal, not masked).  Exact
    ``exp(gamma q_i.k_j)`` for its window (``0 <= i - j < window`` causal, ``|i - j| <
    window`` bidirectional), the first ``n_global`` keys, and its ``n_top`` keys of
    largest logit among its candidates: the ``n_candidates`` (256 if None) other
    allowed keys of largest ``candidate_query . k_j`` (ties: the earlier key;
    ``candidate_query`` None: the mean query).  ``phi_q[i] . phi_k[j]`` (any sign) for
    every other allowed key.  One normalization; rows whose weights sum to 0 are 0.
    """
    Q, K, V, phi_q, phi_k = (np.asarray(X, dtype=np.float64) for X in (Q, K, V, phi_q, phi_k))
    gamma = 1.0 / np.sqrt(Q.shape[1]) if gamma is None else gamma
    n_candidates = 256 if n_candidates is None else n_candidates
    u = Q.mean(axis=0) if candidate_query is None else np.asarray(candidate_query, float)
    scores = K @ u
    Lk = K.shape[0]
    positions = np.arange(Lk)
    visible = np.ones(Lk, dtype=bool)
    if key_padding_mask is not None:
        visible &= ~np.asarray(key_padding_mask, dtype=bool)
    out = np.zeros((Q.shape[0], V.shape[1]))
    for i in range(Q.shape[0]):
        allowed = visible & (positions <= i) if causal else visible.copy()
        delta = i - positions
        near = ((delta >= 0) & (delta < window)) if causal else (np.abs(delta) < window)
        exact = allowed & (near | (positions < n_global))
        if n_top:
            far = [j for j in positions[allowed & ~exact]]
            far.sort(key=lambda j: (-scores[j], j))
            candidates = far[:n_candidates]
            candidates.sort(key=lambda j: -(Q[i] @ K[j]))
            exact[candidates[:n_top]] = True
        logits = gamma * (K @ Q[i])
        weights = np.where(exact, np.exp(logits), phi_k @ phi_q[i])
        weights[~allowed] = 0.0
        if weights.sum() != 0:
            out[i] = weights @ V / weights.sum()
    return out


def naive_taylor_features(X, gamma):
    """``[1, x', x'_i x'_j (i < j), x'_i^2 / sqrt(2)]`` row by row, ``x' = sqrt(gamma) x``,
    in the order of ``np.triu_indices`` (the second-order Taylor map)."""
    rows = []
    for x in np.asarray(X, dtype=np.float64) * np.sqrt(gamma):
        d = len(x)
        row = [1.0, *x]
        for i in range(d):
            for j in range(i, d):
                row.append(x[i] * x[j] * (np.sqrt(0.5) if i == j else 1.0))
        rows.append(row)
    return np.array(rows)


def naive_hrf_estimate(x, y, W, m, n, gamma, lambda_kind, sigma):
    """Hybrid random features' estimate pair by pair: ``lam A + (1 - lam) B`` from the
    rows ``W = [positive (m), trigonometric (m / 2), weight (n)]`` (float64 loops)."""
    out = []
    for a, b in zip(np.asarray(x, float), np.asarray(y, float), strict=True):
        xa, yb = np.sqrt(gamma) * a, np.sqrt(gamma) * b
        pos = np.mean([np.exp(w @ xa - xa @ xa / 2) * np.exp(w @ yb - yb @ yb / 2)
                       for w in W[:m]])  # fmt: skip
        trig = np.exp((xa @ xa + yb @ yb) / 2) * np.mean(
            [np.cos(w @ xa - w @ yb) for w in W[m : m + m // 2]]
        )
        V = W[m + m // 2 : m + m // 2 + n]
        if lambda_kind == "angular":
            lam = 0.5 - 0.5 * np.mean([np.sign(v @ a or 1.0) * np.sign(v @ b or 1.0) for v in V])
            out.append(lam * pos + (1 - lam) * trig)
        else:
            lam = np.mean([np.cos(sigma * v @ (xa - yb)) for v in V])
            out.append((1 - lam) * pos + lam * trig)
    return np.array(out)


def naive_tensor_sketch(X, C):
    """``[1, TS_1(x), TS_2(x) / sqrt(2), ...]`` by explicit circular convolutions of the
    count sketches ``C`` (``(p, D, d)``) of the already scaled rows ``X``."""
    p, D, _ = C.shape
    rows = []
    for x in np.asarray(X, dtype=np.float64):
        row = [1.0]
        conv = C[0] @ x
        row.extend(conv)
        fact = 1.0
        for k in range(1, p):
            sketch = C[k] @ x
            new = np.zeros(D)
            for a in range(D):
                for b in range(D):
                    new[(a + b) % D] += conv[a] * sketch[b]
            conv = new
            fact *= k + 1
            row.extend(conv / np.sqrt(fact))
        rows.append(row)
    return np.array(rows)


#: Data-free maps of the registry whose oracles above are their own (their rows and
#: widths do not follow favor_features' layout): name -> oracle.
OWN_ORACLES = {
    "taylor": naive_taylor_features,
    "hrf": naive_hrf_estimate,
    "hrf_gaussian": naive_hrf_estimate,
    "tensorsketch": naive_tensor_sketch,
}

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
from .._validation import check_attention_inputs, check_bool, check_float_array, check_int
from ..feature_maps import check_constants, fit_constants
from .common import heads, run_parallel
from .hybrid_engine import TopKeys, hybrid_head
from .plan import head_groups, plan_attention, warn_zero_rows
from .values import scaled_values, unscale

__all__ = ["hybrid_attention", "DEFAULT_N_CANDIDATES"]

#: Candidates per query when ``n_top > 0`` and ``n_candidates`` is None.
DEFAULT_N_CANDIDATES = 256

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
    key_padding_mask=None,
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
    window : int or array-like of int, default=64
        Exact keys around each query: ``0 <= i - j < window`` (causal) or
        ``|i - j| < window`` (bidirectional).  0: no window.  An array: one window per
        head (axis -3), so that a model spends exact keys where a head needs them.
    n_global : int, default=0
        The first ``n_global`` keys are exact for every query (causal: once
        reached), e.g. ``1`` for a head's attention sink at token 0.
    n_top : int or array-like of int, default=0
        Besides the window and the global keys, each query takes exactly the
        ``n_top`` keys of largest logit among its candidates.  0: none.  An array: one
        per head (axis -3).
    n_candidates : int or None, default=None
        Candidates per query (with ``n_top > 0``; 256 if None, which refuses an
        ``n_top`` above 256): the ``n_candidates``
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
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        Kind of the drawn projection.
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (n_projections, d), default=None
        Use these projections instead of drawing them.
    constants : dict or None, default=None
        Frozen data constants of the map (e.g. from ``fmap.fit`` on calibration
        queries and keys), used for every (batch, head).
    key_padding_mask : array-like of bool, shape (..., L), default=None
        True marks a key to ignore (in the window, the global keys, the candidates and
        the far sums alike).  A row whose keys are all ignored is 0.
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection.

    Returns
    -------
    out : ndarray of shape (..., L, dv)
        float32 if Q, K and V are float32, else float64.

    Notes
    -----
    Time ``O(L (m + window + n_global) (d + dv))``; memory ``O(group (m + window +
    n_global) + m dv)`` per head (groups of ``HYBRID_GROUP_ROWS`` query rows),
    independent of ``L``.  float32 inputs are computed in float32 (logits and
    stabilizers in float64 where they meet).  Top keys add ``O(L (n_candidates +
    chunk) d + L n_top (m + dv))`` time and ``O(n_candidates m)`` memory (bidirectional:
    ``n_candidates + 2 window - 1`` pooled keys).  The heads run on favorkern's
    threads; with fewer causal heads than threads, each head runs over ranges of its
    rows, one per thread (a range first builds the far state and the candidate pool
    of the keys before it).

    Top keys: row ``i``'s far keys are those it may attend to outside its window and
    the first ``n_global``.  Its candidates are the ``n_candidates`` far keys of
    largest ``candidate_query . k_j`` (ties: the earlier key), its top keys the
    ``n_top`` candidates of largest logit (exact ties broken arbitrarily, but the
    same in every run).  In causal mode both depend on keys ``j <= i`` only.  The
    estimate is exact when ``n_top`` and ``n_candidates`` cover every key.  How much
    the top keys gain depends on how well one direction ranks the keys a head's
    queries attend to; pretrained heads' queries share a large mean, which makes the
    mean query of calibration text a reasonable filter.

    Causal: the far keys of row ``i`` (``n_global <= j <= i - window``) are a causal
    FAVOR pass whose keys lag the queries by ``window`` positions: per block of
    queries, a state of the keys far for the whole block and a masked product with the
    block's own far keys; the window and global keys are one dense product per block
    (a batched product over overlapping views for a group of blocks); no window key
    is added and then subtracted.  Bidirectional: one state of every key ``j >=
    n_global``, minus per row the estimates of its near keys (``|i - j| < window``,
    one product per block of queries with its band of keys): exact in exact
    arithmetic, but the subtraction loses the far sums' relative precision where the
    near keys' estimates dominate them (in float32, rounding of ``1e-7`` of the near
    estimates).  The top keys of a group of rows are scored by one product, chosen
    and applied (their exact terms, and the removal of their estimates) by two
    compiled kernels.  Stabilizers: ``phi(x) = exp(r(x)) psi(x)`` with ``|psi| <= 1``
    (the row's largest logit, the cos map's row factor, or the largest value of an
    unbounded map); row ``i``'s far sums are kept at ``exp(a_i + b_i)``, ``b_i`` the
    running maximum of ``r`` over the far keys it reaches (so no output depends on a
    later token, not even through rounding), and its exact and far terms share one
    constant.  Rows whose normalizer vanishes are 0, with a
    ``FeatureUnderflowWarning`` for the non-negative maps.

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
    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
    n_heads = batch[-1] if batch else 1
    windows = per_head(window, "window", n_heads)
    n_global = check_int(n_global, "n_global", min_value=0)
    if (windows.any() or n_global) and Q.shape[-2] != K.shape[-2]:
        raise ValueError(
            "hybrid_attention aligns query i with key i: Q and K must have the same length "
            f"when window > 0 or n_global > 0, got {Q.shape[-2]} and {K.shape[-2]}"
        )
    d = Q.shape[-1]
    plan = plan_attention(
        feature_map, d, n_components=n_components, projection=projection,
        projection_matrix=projection_matrix, gamma=gamma, causal=causal, constants=constants,
        random_state=random_state,
    )  # fmt: skip
    tops, n_candidates, directions = check_top(
        n_top, n_candidates, candidate_query, causal, batch, d, n_heads
    )
    sets = _constant_sets(plan, batch, n_heads)
    # every feature the engine uses is at most 1 in magnitude (see stable_features)
    V, exponents = scaled_values(V, K.shape[-2] * plan.n_components)
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    shared = {}
    tasks = []
    for q, k, v, m, idx in heads(Q, K, V, mask, batch):
        h = idx[-1] if idx else 0
        u = None
        if tops[h]:
            u = directions[idx] if directions is not None and directions.ndim > 1 else directions
        head_set = sets[h]
        if head_set is not None and id(head_set) not in shared:
            shared[id(head_set)] = plan.features(Q.dtype, head_set)
        features = None if head_set is None else shared[id(head_set)]
        tasks.append(partial(
            _one_head, q, k, v, m, idx, out, plan, head_set, features, int(windows[h]),
            n_global, int(tops[h]), n_candidates, u,
        ))  # fmt: skip
    work = len(tasks) * (Q.shape[-2] + K.shape[-2]) * plan.n_components
    workers = n_threads() if work >= _config.ATTENTION_PARALLEL_MIN_WORK else 1
    # Small products: threaded BLAS costs more than it gains (and much more under load);
    # the heads run on favorkern's threads instead, each writing its own rows of out.
    # Fewer causal heads than threads: one head at a time, over ranges of its rows.
    with blas_single_thread():
        if causal and len(tasks) < workers:
            for task in tasks:
                task(workers=workers)
        else:
            run_parallel(tasks, workers)
    warn_zero_rows(plan.feature_map, out, V, mask, causal)
    return unscale(out, exponents)


def per_head(value, name, n_heads, *, min_value=0) -> np.ndarray:
    """An int, or one int per head (axis -3 of the inputs), as an array of ``n_heads``."""
    if np.ndim(value) == 0:
        return np.full(n_heads, check_int(value, name, min_value=min_value), dtype=np.int64)
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer or a 1-D array of integers (one per head), got "
            f"{array.dtype} of shape {array.shape}"
        )
    if array.shape[0] != n_heads:
        raise ValueError(
            f"{name} has {array.shape[0]} entries but the inputs have {n_heads} heads (axis -3)"
        )
    if array.size and array.min() < min_value:
        raise ValueError(f"{name} must be >= {min_value} for every head, got {array.tolist()}")
    return array.astype(np.int64)


def check_top(n_top, n_candidates, candidate_query, causal, batch, d, n_heads):
    """Validate the top-key options: ``(n_top per head, n_candidates, directions)``.

    ``directions``: ``batch + (d,)``, ``(d,)``, an empty marker (the mean query of each
    head) or None.
    """
    tops = per_head(n_top, "n_top", n_heads)
    if not tops.any():
        for name, value in (("n_candidates", n_candidates), ("candidate_query", candidate_query)):
            if value is not None:
                raise ValueError(f"{name} is used only with n_top > 0, got n_top=0")
        return tops, None, None
    largest = int(tops.max())
    if n_candidates is None:
        if largest > DEFAULT_N_CANDIDATES:
            raise ValueError(
                f"n_top={largest} exceeds the default n_candidates={DEFAULT_N_CANDIDATES}: "
                "pass n_candidates >= n_top"
            )
        n_candidates = DEFAULT_N_CANDIDATES
    else:
        n_candidates = check_int(n_candidates, "n_candidates", min_value=1)
        if n_candidates < largest:
            raise ValueError(f"n_candidates must be at least n_top={largest}, got {n_candidates}")
    if candidate_query is None:
        if causal:
            raise ValueError(
                "n_top > 0 with causal=True needs candidate_query (e.g. the mean query of "
                "calibration text): the default, the mean of all queries, would make "
                "outputs depend on later tokens"
            )
        return tops, n_candidates, _MEAN_QUERY
    u = check_float_array(candidate_query, "candidate_query", min_ndim=1, dtype=np.float64)
    if u.shape[-1] != d:
        raise ValueError(
            f"candidate_query must have the feature dimension d = {d} of Q, got shape {u.shape}"
        )
    if u.ndim == 1:
        return tops, n_candidates, u
    try:
        return tops, n_candidates, np.ascontiguousarray(np.broadcast_to(u, batch + (d,)))
    except ValueError:
        raise ValueError(
            f"the leading dimensions of candidate_query {u.shape[:-1]} do not broadcast to "
            f"those of Q, K and V {batch}"
        ) from None


# Marker: score keys by the mean of the head's own queries.
_MEAN_QUERY = np.empty(0)


def _constant_sets(plan, batch, n_heads):
    """Per head (axis -3): its frozen constants ({} for data-free maps), or None where
    the map fits them on the head's own tokens."""
    if plan.head_constants is not None:
        sets = [None] * n_heads
        for selector, constants in head_groups(n_heads if batch else None, plan.head_constants):
            for h in range(n_heads)[selector[-3]]:
                sets[h] = constants
        return sets
    if plan.constants is not None or not plan.feature_map.data_constants:
        return [plan.constants or {}] * n_heads
    return [None] * n_heads


def _one_head(q, k, v, mask, idx, out, plan, constants, features, window, n_global, n_top,
              n_candidates, u, workers=1):  # fmt: skip
    """One (batch, head): constants, features, then the engine."""
    fmap, gamma = plan.feature_map, plan.gamma
    if features is None:
        keys = k if mask is None else k[~mask]
        constants = check_constants(fmap, fit_constants(
            fmap, q.astype(np.float64), keys.astype(np.float64), input_scale=math.sqrt(gamma),
            projection=plan.projection.matrix,
        ))  # fmt: skip
        features = plan.features(q.dtype, constants)
    q, k = np.ascontiguousarray(q), np.ascontiguousarray(k)
    qf = np.ascontiguousarray(fmap.prepare(q, "query", constants), dtype=q.dtype)
    kf = np.ascontiguousarray(fmap.prepare(k, "key", constants), dtype=q.dtype)
    top = None
    if n_top:
        if u.size == 0:
            u = q.astype(np.float64).mean(axis=0)
        top = TopKeys(n_top, n_candidates, k.astype(np.float64) @ u)
    out[idx] = hybrid_head(
        features, q, k, np.ascontiguousarray(v), mask, gamma, window, n_global, plan.causal, top,
        (qf, kf), _config.HYBRID_CHUNK_ROWS, _config.HYBRID_GROUP_ROWS, workers,
    )  # fmt: skip

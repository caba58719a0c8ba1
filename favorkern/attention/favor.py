"""FAVOR+ attention: ``favor_attention`` over any registered map.

``exp(gamma q.k)`` is replaced by ``phi(q).phi(k)`` with a feature map of the
registry (:mod:`favorkern.feature_maps`).  A call checks its arguments, builds an
:class:`~.plan.AttentionPlan` and runs it (:mod:`.plan`); the algorithms live in
:mod:`.bidirectional` and :mod:`.causal`, the key state in :mod:`.state`.
"""

from __future__ import annotations

import numbers

from .._validation import (
    check_attention_arrays,
    check_attention_inputs,
    check_bool,
    check_int,
    check_option,
    check_seed,
)
from ..feature_maps import get_feature_map
from .decoding import DecodingState
from .plan import ATTENTION_METHODS, attend, plan_attention

__all__ = ["favor_attention", "check_call_arrays", "check_continuation", "error_seed"]

#: Default ``warn_error``: the estimated median relative row error above which an
#: :class:`~favorkern._warnings.ApproximationWarning` is emitted.
DEFAULT_WARN_ERROR = 0.5


def favor_attention(
    Q,
    K,
    V,
    *,
    causal=False,
    n_components=None,
    feature_map="positive",
    projection="orthogonal",
    gamma=None,
    projection_matrix=None,
    constants=None,
    key_padding_mask=None,
    random_state=None,
    method="favor",
    initial_state=None,
    return_state=False,
    return_error=False,
    n_error_rows=64,
    warn_error=DEFAULT_WARN_ERROR,
):
    """FAVOR+ attention: softmax attention by random features in linear time and memory.

    Approximates ``softmax(gamma Q K^T) V`` by ``D^-1 phi(Q) (phi(K)^T V)`` with
    ``D = diag(phi(Q) phi(K)^T 1)`` (Performer, eq. 4; causal: prefix sums, eq. 11),
    where ``phi(x).phi(y)`` estimates ``exp(gamma x.y)``; each of q and k enters the
    feature map as ``gamma^(1/2) x``.  Time O(L m (d + dv)); extra memory O(chunk x m
    + m x dv) per worker thread, independent of L.

    Parameters
    ----------
    Q : array-like of shape (..., Lq, d)
        Queries.  Leading dimensions (batch, heads) broadcast against those of K, V
        and key_padding_mask.
    K : array-like of shape (..., Lk, d)
        Keys.
    V : array-like of shape (..., Lk, dv)
        Values.
    causal : bool, default=False
        If True, output ``i`` uses keys ``0..i`` only (requires ``Lq == Lk``).  No
        output depends on a later token: the key stabilizer of row ``i`` is the
        running maximum over keys ``0..i``.
    n_components : int or None, default=None
        Output width of the feature map (256 if None; with ``projection_matrix``,
        its rows times the map's outputs per projection).  Paired maps
        (``"hyperbolic"``, ``"trigonometric"``) use ``ceil(n_components / 2)``
        projections.
    feature_map : str or FeatureMap, default="positive"
        A map of the registry (:func:`favorkern.feature_maps.feature_map_names`):
        ``"positive"`` ``exp(w.x - |x|^2/2)`` (FAVOR+); ``"hyperbolic"``
        ``exp(+-w.x - |x|^2/2)``; ``"trigonometric"`` ``exp(|x|^2/2) [cos w.x,
        sin w.x]`` (can be negative: its normalizer ``D`` can be <= 0, giving sign
        flips or huge values, :ref:`theory-trig-denominator`); ``"relu"`` ``max(w.x, 0)``
        (generalized attention, which does *not* estimate softmax attention);
        ``"optimal"`` GERF / OPRF (FAVOR++) with ``A*`` from the homogeneity
        heuristic on the current Q and K of each (batch, head); ``"saderf"``
        (FAVOR#) rescales ``q_l -> psi_l q_l``, ``k_l -> k_l / psi_l`` per dimension,
        then ``"optimal"``.  Maps with data constants fit them on all tokens, so
        they are bidirectional only.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        Kind of the drawn projection (:func:`favorkern.draw_projection`);
        ``"structured"`` uses the fast Walsh-Hadamard product at large ``d``.
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (n_projections, d), default=None
        Use these projections instead of drawing them.
    constants : dict, sequence of dicts or None, default=None
        Frozen data constants of the map (e.g. ``{"A": -0.1}`` for ``"optimal"``),
        shared by every head; or one dict per head (axis -3; ``H / len(constants)``
        consecutive heads share a set, as for grouped-query calibration), e.g.
        ``[att.frozen_constants(h) for h in range(H)]`` of a fitted
        :class:`FavorAttention` (with ``projection_matrix=att.projection_``).  None:
        maps with data constants fit them per head on the call's own tokens
        (bidirectional only).
    key_padding_mask : array-like of bool, shape (..., Lk), default=None
        True marks a key to ignore.  A row whose keys are all ignored is 0.
    random_state : int, RandomState instance or None, default=None
        Seed of the drawn projection (and of the map's other draws).
    method : {"favor", "auto", "chunked", "recurrent"}, default="favor"
        ``"favor"``: always the FAVOR estimate, the causal algorithm chosen by a
        measured rule (see Notes).  ``"chunked"`` / ``"recurrent"``: FAVOR with that
        causal algorithm (chunked matrix products, or the numba recurrence over tokens
        parallel over value columns); both are exact implementations of the same
        estimate.  ``"auto"``: the exact :func:`softmax_attention` where it is
        measured faster (short sequences: ``Lq Lk <= 1.3 m (Lq + Lk)``, about
        ``L <= 2.6 m`` for ``Lq = Lk``; only for maps that estimate the softmax
        kernel, and not with ``initial_state``/``return_state``), else as
        ``"favor"``.  Exact attention is what FAVOR estimates, so ``"auto"`` never
        gives a worse answer, but its result then does not depend on the projection.
    initial_state : DecodingState or None, default=None
        Continue a causal sequence: ``Q, K, V`` are the next tokens after those the
        state has seen (causal only; the state comes from ``return_state=True`` or
        :meth:`FavorAttention.initial_state`, with the same projection, feature map
        and ``gamma``, else a ``ValueError``).  The state is updated in place.  The
        continuation runs the chunked algorithm per head (``method`` is not used; a
        single long head is not split over threads).
        With a state (or ``return_state``), grouped-query attention is accepted: the
        query head axis (-3) may hold a multiple ``g`` of the key/value heads, query
        head ``i`` reading key/value head ``i // g`` (no copy of K or V).
    return_state : bool, default=False
        Also return the :class:`DecodingState` after the last token (causal only),
        to continue the sequence later.
    return_error : bool, default=False
        Also return an :class:`~favorkern.attention.error.AttentionErrorEstimate` of
        the output's relative row errors, from the exact attention of
        ``n_error_rows`` sampled query rows per (batch, head)
        (:func:`~favorkern.attention.error.estimate_attention_error`).  Not with
        ``initial_state`` (the earlier keys are gone).
    n_error_rows : int, default=64
        Query rows sampled per (batch, head) by ``return_error``.
    warn_error : float or None, default=0.5
        With ``return_error``: an :class:`~favorkern._warnings.ApproximationWarning`
        when the estimated median relative row error exceeds it (None: never).

    Returns
    -------
    out : ndarray of shape (..., Lq, dv)
        float32 if Q, K and V are float32, else float64.
    state : DecodingState
        Only with ``return_state=True``.
    estimate : AttentionErrorEstimate
        Only with ``return_error=True`` (last).

    See Also
    --------
    softmax_attention : the exact O(L^2) reference.
    FavorAttention : holds one projection across calls.

    Notes
    -----
    Stabilizers (cancel exactly in the normalized output): query features are
    divided by their row maximum; keys by one constant per (batch, head), the
    running maximum (bidirectional: over all keys, rescaling the state when it grows;
    causal: over keys ``0..i`` for output ``i``).  The trigonometric map has no
    sign-safe stabilizer; its ``exp(|k|^2/2)`` factor uses the same key constant.

    No epsilon is added to the features.  The only guard: where the normalizer
    ``phi(q_i) . sum_j phi(k_j)`` is exactly 0 (every key masked, or every feature
    product underflowed), the output row is 0; in float32 also where it is subnormal
    (all but a few bits underflowed).  Where float32 inputs lose rows that way, those
    rows (and only those: a row is chosen by its own output, which no later token
    changes) are taken from the call made again in float64 (whose exponents reach 8x
    further) and cast back; only rows that float64 loses too stay 0, with a
    ``FeatureUnderflowWarning``.  Values near the dtype's largest number are divided
    by powers of two per column for the sums and the outputs multiplied back (exact).

    Causal ``method="favor"`` always uses the chunked products (chunks of 32 rows, 64
    from 512 features, taken in groups; the recurrence measured slower here): with at
    least one (batch, head) per worker thread each thread runs whole heads; on two
    threads one head runs as a pipeline (one thread on a group's keys while the other
    maps the next group's queries and emits the previous group); on more, each head is
    split into one contiguous range per thread, the ranges' key states are computed in
    parallel and prefix-merged (each range starts from the state of the keys before
    it), and the ranges then run in parallel.  ``method="recurrent"`` runs the numba recurrence,
    heads one after the other with the value columns split over threads (or whole
    heads per thread).

    References
    ----------
    K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import favor_attention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(scale=0.5, size=(2, 100, 16))
    >>> V = rng.normal(size=(100, 8))
    >>> exact = softmax_attention(Q, K, V)
    >>> approx = favor_attention(Q, K, V, n_components=1024, random_state=0)
    >>> approx.shape
    (100, 8)
    >>> bool(np.abs(approx - exact).max() < 0.2)
    True
    """
    get_feature_map(feature_map)  # names before arrays: no work for a misspelt map
    check_option(method, "method", ATTENTION_METHODS)
    continued = check_continuation(
        causal, initial_state, return_state, return_error, n_error_rows, warn_error
    )
    Q, K, V, mask, batch = check_call_arrays(Q, K, V, causal, key_padding_mask, continued)
    plan = plan_attention(
        feature_map, Q.shape[-1], n_components=n_components, projection=projection,
        projection_matrix=projection_matrix, gamma=gamma, causal=causal, method=method,
        constants=constants, random_state=random_state,
    )  # fmt: skip
    error = (n_error_rows, warn_error, error_seed(random_state)) if return_error else None
    return attend(plan, Q, K, V, mask, batch, initial_state, return_state, error)


def check_call_arrays(Q, K, V, causal, key_padding_mask, continued):
    """``(Q, K, V, mask, batch)`` checked; ``batch`` None for a continued call (its
    query heads may be a multiple of the key/value heads)."""
    if continued:
        return (*check_attention_arrays(Q, K, V, key_padding_mask), None)
    return check_attention_inputs(Q, K, V, causal, key_padding_mask)


def check_continuation(
    causal, initial_state, return_state, return_error, n_error_rows, warn_error
) -> bool:
    """True when the call continues (or returns) a decoding state; checks the options."""
    return_state = check_bool(return_state, "return_state")
    check_bool(return_error, "return_error")
    check_int(n_error_rows, "n_error_rows")
    if warn_error is not None and (
        isinstance(warn_error, bool)
        or not isinstance(warn_error, numbers.Real)
        or not warn_error >= 0  # NaN too
    ):
        raise ValueError(f"warn_error must be a number >= 0 or None, got {warn_error!r}")
    if initial_state is not None and not isinstance(initial_state, DecodingState):
        raise TypeError(
            f"initial_state must be a DecodingState, got {type(initial_state).__name__}"
        )
    continued = return_state or initial_state is not None
    if continued and not check_bool(causal, "causal"):
        raise ValueError("initial_state and return_state need causal=True")
    if return_error and initial_state is not None:
        raise ValueError(
            "return_error cannot be combined with initial_state: the exact attention of "
            "the new rows needs the keys the state has absorbed"
        )
    return continued


def error_seed(random_state):
    """A seed for the rows sampled by the error estimate, independent of the projection."""
    if random_state is None or isinstance(random_state, numbers.Integral):
        return random_state
    return int(check_seed(random_state).randint(2**31))

"""``FavorAttention``: FAVOR+ attention holding one projection and its fitted constants.

Calls take the arguments of :func:`~favorkern.attention.favor.favor_attention`;
:meth:`FavorAttention.fit` freezes the data constants of adaptive maps per head, and
:meth:`FavorAttention.initial_state` / :meth:`FavorAttention.step` decode token by
token (:mod:`favorkern.attention.decoding`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._validation import (
    check_attention_arrays,
    check_float_array,
    check_int,
    check_logit_scale,
    check_option,
    check_seed,
)
from ..feature_maps import fit_constants, get_feature_map
from ..projections import PROJECTION_KINDS
from .decoding import DecodingState, HeadFeatures, decode
from .favor import DEFAULT_WARN_ERROR, check_call_arrays, check_continuation, error_seed
from .plan import (
    AttentionPlan,
    attend,
    check_constants_argument,
    check_state,
    head_groups,
    plan_attention,
    resolve_projection,
    run_continuation,
    warn_zero_rows,
)

__all__ = ["FavorAttention"]


def _fit_constants(fmap, Q, K, gamma, projection):
    """Constants of ``fmap`` fitted on calibration data: shared, or one set per head.

    2-D ``Q``, ``K``: one set.  Otherwise the axis -3 holds the heads (``K`` may have
    fewer, a divisor: grouped-query attention, whose query heads of one group pool)
    and every other leading axis and the tokens pool.
    """
    scale = math.sqrt(gamma)
    d = Q.shape[-1]
    if Q.ndim == 2 and K.ndim == 2:
        return fit_constants(fmap, Q, K, input_scale=scale, projection=projection), None
    if Q.ndim < 3 or K.ndim < 3:
        raise ValueError(
            f"Q and K must both be 2-D (one set of constants) or both have a head axis (-3), "
            f"got shapes {Q.shape} and {K.shape}"
        )
    n_query, n_kv = Q.shape[-3], K.shape[-3]
    if n_query % n_kv:
        raise ValueError(
            f"Q has {n_query} heads (axis -3), not a multiple of the {n_kv} heads of K"
        )
    head_constants = []
    for sl, h in head_groups(n_query, range(n_kv)):
        q = Q[sl].reshape(-1, d)
        k = K[..., h, :, :].reshape(-1, d)
        head_constants.append(fit_constants(fmap, q, k, input_scale=scale, projection=projection))
    return None, head_constants


class FavorAttention:
    """FAVOR+ attention holding one random projection (and fitted constants) across calls.

    The projection is drawn on the first call for the ``d`` it sees (or by
    :meth:`fit`) and kept until :meth:`redraw`; calls then take the arguments of
    :func:`favor_attention`.  :meth:`fit` with calibration queries and keys also
    fits the constants of adaptive maps (``"optimal"``, ``"saderf"``) once and
    freezes them, which makes them causal-safe: they then work with
    ``causal=True``, :meth:`step` and :mod:`favorkern.dask`.

    Decoding: :meth:`initial_state` and :meth:`step` continue causal attention one
    token (or a block of tokens) at a time from an ``O(m dv)`` state per head
    (:class:`~favorkern.attention.decoding.DecodingState`).

    Parameters
    ----------
    feature_map : str or FeatureMap, default="positive"
        A map of the registry (see :func:`favor_attention`).
    n_components : int or None, default=None
        Output width of the feature map (256 if None; with ``projection_matrix``, its
        rows times the map's outputs per projection).  Paired maps use
        ``ceil(n_components / 2)`` projections.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        Kind of projection (:func:`favorkern.draw_projection`).
    projection_matrix : array-like of shape (n_projections, d), default=None
        Hold these projections instead of drawing them (then :meth:`redraw` is an
        error).
    constants : dict, sequence of dicts or None, default=None
        Frozen data constants, as for :func:`favor_attention` (one set shared by every
        head, or one per group of heads): held as if fitted, so adaptive maps work
        causally without :meth:`fit` with data (which is then an error).
    causal : bool, default=False
        Default for the ``causal`` argument of calls.
    random_state : int, RandomState instance or None, default=None
        Seed; redraws continue the same random stream, so a seeded instance gives
        the same sequence of projections.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, d)
        The current projection (after the first call or :meth:`fit`).
    constants_ : dict
        Frozen constants after ``fit(Q, K)``: each name of the map's
        ``data_constants`` maps to an array with one entry per head (axis 0) when
        fitted on inputs with a head axis, else to the map's single value; ``{}`` for
        data-free maps.  Absent before ``fit(Q, K)``.  See
        :meth:`frozen_constants`.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import FavorAttention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 50, 16))
    >>> attention = FavorAttention(n_components=64, causal=True, random_state=0)
    >>> out = attention(Q, K, V)
    >>> out.shape, attention.projection_.shape
    ((2, 50, 16), (64, 16))
    >>> bool(np.array_equal(out, attention(Q, K, V)))    # same projection
    True

    Token by token, the same outputs:

    >>> state = attention.initial_state(batch_shape=(2,), dv=16)
    >>> steps = [attention.step(Q[:, t:t + 1], K[:, t:t + 1], V[:, t:t + 1], state)[0]
    ...          for t in range(50)]
    >>> bool(np.allclose(np.concatenate(steps, axis=1), out))
    True

    Adaptive maps in causal mode, with constants fitted on calibration data:

    >>> optimal = FavorAttention(n_components=64, feature_map="optimal", random_state=0)
    >>> optimal = optimal.fit(Q, K)
    >>> optimal.constants_["A"].shape            # one A per head
    (2,)
    >>> optimal(Q, K, V, causal=True).shape
    (2, 50, 16)
    >>> bool(np.array_equal(out, attention.redraw()(Q, K, V)))
    False
    """

    def __init__(
        self,
        feature_map="positive",
        n_components=None,
        *,
        projection="orthogonal",
        projection_matrix=None,
        constants=None,
        causal=False,
        random_state=None,
    ):
        self.feature_map = feature_map
        self.n_components = n_components
        self.projection = projection
        self.projection_matrix = projection_matrix
        self.constants = constants
        self.causal = causal
        self.random_state = random_state

    def fit(self, Q, K=None, *, gamma=None):
        """Draw a projection, and with data fit and freeze the map's constants.

        Parameters
        ----------
        Q : int or array-like of shape (..., L, d)
            The input dimension ``d`` (only draws a projection), or calibration
            queries.  Constants are fitted per head: with a head axis (-3) one set per
            head, pooling every other leading axis (e.g. a batch of calibration
            sequences) and the tokens; 2-D inputs give one set for all heads.
        K : array-like of shape (..., L', d), default=None
            Calibration keys (``Q`` if None).  With fewer heads than ``Q`` (a divisor,
            grouped-query attention), the query heads of a group pool.
        gamma : float or None, default=None
            Logit scale the constants are fitted for (``1 / sqrt(d)`` if None).

        Returns
        -------
        self : FavorAttention
        """
        if self.n_components is not None:
            check_int(self.n_components, "n_components")
        fmap = get_feature_map(self.feature_map)
        check_option(self.projection, "projection", PROJECTION_KINDS)
        given = check_constants_argument(fmap, self.constants)
        if self.constants is not None and not (
            isinstance(Q, numbers.Integral) and not isinstance(Q, bool)
        ):
            raise ValueError(
                "constants were given to FavorAttention: fit(Q, K) would replace them; "
                "call fit(d), or leave constants=None to fit them on Q and K"
            )
        if isinstance(Q, numbers.Integral) and not isinstance(Q, bool):
            if K is not None:
                raise ValueError("fit(d) takes no K; pass calibration queries Q to fit with keys")
            d = check_int(Q, "d")
            arrays = None
        else:
            Q = check_float_array(Q, "Q", min_ndim=2, dtype=np.float64)
            K = Q if K is None else check_float_array(K, "K", min_ndim=2, dtype=np.float64)
            if K.shape[-1] != Q.shape[-1]:
                raise ValueError(
                    f"K must have the feature dimension d = {Q.shape[-1]} of Q, got {K.shape}"
                )
            d = Q.shape[-1]
            arrays = (Q, K)
        self._rng = check_seed(self.random_state)
        for name in ("constants_", "_shared_constants", "_head_constants"):
            self.__dict__.pop(name, None)
        self._draw(d)
        # drawn after the projection, so seeded projections stay as they were
        self._error_rng = np.random.default_rng(error_seed(self._rng))
        if self.constants is not None:
            self._freeze(fmap, *given)
        elif arrays is not None:
            gamma = check_logit_scale(gamma, d)
            if fmap.data_constants:
                shared, per_head = _fit_constants(fmap, *arrays, gamma, self.projection_)
            else:
                shared, per_head = {}, None
            self._freeze(fmap, shared, per_head)
        return self

    def _freeze(self, fmap, shared, per_head):
        """Hold ``shared`` (one set) or ``per_head`` constants as the frozen ones."""
        self._shared_constants, self._head_constants = shared, per_head
        if per_head is None:
            self.constants_ = dict(shared)
        else:
            self.constants_ = {
                key: np.stack([np.asarray(c[key], dtype=np.float64) for c in per_head])
                for key in fmap.data_constants
            }

    def frozen_constants(self, head=None):
        """The frozen constants for one head (a dict for ``fmap.spec``), or None.

        ``head`` indexes the heads the constants were fitted for (ignored when one
        set serves all heads; required otherwise).  None before ``fit(Q, K)``.  This
        is what :mod:`favorkern.dask` needs to run a fitted adaptive map.
        """
        if not hasattr(self, "constants_"):
            return None
        if self._head_constants is None:
            return dict(self._shared_constants)
        if head is None:
            raise ValueError(
                f"the constants were fitted per head ({len(self._head_constants)} heads): "
                "pass head="
            )
        head = check_int(head, "head", min_value=0)
        if not 0 <= head < len(self._head_constants):
            raise ValueError(f"head must be in [0, {len(self._head_constants)}), got {head}")
        return dict(self._head_constants[head])

    def redraw(self):
        """Draw a new projection for the same ``d``; returns ``self``.

        Fitted constants stay (they do not depend on the projection), except those of a
        map fitted around its projection (``feature_map="fitted"``): redrawing it
        needs a new fit: ``fit(Q, K)`` again instead, with another ``random_state`` for
        another projection.
        """
        if not hasattr(self, "projection_"):
            raise ValueError("FavorAttention has no projection yet: call it or fit(d) first")
        if self.projection_matrix is not None:
            raise ValueError("projection_matrix was given: redraw() has nothing to draw")
        self._refuse_fitted_projection_change("redraw()")
        self._draw(self.projection_.shape[1])
        return self

    @property
    def projection_(self):
        try:
            return self.__dict__["_projection_matrix"]
        except KeyError:
            raise AttributeError("'FavorAttention' object has no attribute 'projection_'") from None

    @projection_.setter
    def projection_(self, matrix):
        # every cached decoder was built from the old matrix: a replaced projection_
        # must reach initial_state and step as it reaches calls
        self.__dict__["_projection_matrix"] = matrix
        self.__dict__["_decoders"] = {}

    def _draw(self, d):
        fmap = get_feature_map(self.feature_map)
        self._projection = resolve_projection(
            fmap, self.projection_matrix, self.n_components, d, self.projection, self._rng
        )
        self.projection_ = self._projection.matrix

    def _refuse_fitted_projection_change(self, what):
        fmap = get_feature_map(self.feature_map)
        if fmap.fit_takes_projection and getattr(self, "constants_", None):
            raise ValueError(
                f"{what} would leave the constants of feature_map={fmap.name!r} fitted "
                "around the old projection: fit(Q, K) again instead (set another random_state "
                "for another projection)"
            )

    def _current_projection(self, fmap, d):
        proj = self._projection
        if proj.matrix is not self.projection_:  # projection_ was replaced by hand
            self._refuse_fitted_projection_change("replacing projection_")
            proj = resolve_projection(fmap, self.projection_, None, d, self.projection, self._rng)
            self._projection = proj
            self._decoders = {}
        return proj

    def _ensure_projection(self, d):
        if not hasattr(self, "projection_"):
            self.fit(d)
        elif self.projection_.shape[1] != d:
            raise ValueError(
                f"Q has d = {d} features but the projection was drawn for "
                f"d = {self.projection_.shape[1]}; call fit({d}) to draw a new one"
            )

    def _plan(self, d, gamma, causal, method="favor") -> AttentionPlan:
        """The :class:`~.plan.AttentionPlan` of a call: the held projection and constants."""
        fmap = get_feature_map(self.feature_map)
        per_head = getattr(self, "_head_constants", None)
        constants = getattr(self, "_shared_constants", None) if per_head is None else per_head
        return plan_attention(
            fmap, d, gamma=gamma, causal=causal, method=method, constants=constants,
            drawn=self._current_projection(fmap, d),
        )  # fmt: skip

    def _decoder(self, dtype, gamma) -> HeadFeatures:
        """The per-head features for decoding, cached per (dtype, gamma)."""
        key = (np.dtype(dtype), gamma)
        hf = self._decoders.get(key)
        if hf is not None and hf.fmap is not get_feature_map(self.feature_map):
            self._decoders = {}  # the map was replaced under its name: new features
            hf = None
            fmap = get_feature_map(self.feature_map)
            if fmap.n_projections(self._projection.n_components) != self.projection_.shape[0]:
                raise ValueError(
                    f"feature map {fmap.name!r} was replaced under its name by a map with "
                    f"{fmap.outputs_per_projection} outputs per projection: call fit() again "
                    "to draw a projection for it"
                )
        if hf is None:
            fmap = get_feature_map(self.feature_map)
            if fmap.data_constants and not hasattr(self, "constants_"):
                raise ValueError(
                    f"feature_map={fmap.name!r} fits its constants on the data; for causal "
                    "attention and decoding fit them once with fit(Q, K) on calibration data"
                )
            plan = self._plan(self.projection_.shape[1], gamma, True)
            hf = plan.head_features(dtype)
            self._decoders[key] = hf
        return hf

    def initial_state(self, batch_shape=(), dv=None, *, dtype=np.float64):
        """An empty :class:`~favorkern.attention.decoding.DecodingState` for :meth:`step`.

        Parameters
        ----------
        batch_shape : tuple of int, default=()
            Leading (batch, key/value head) dimensions of the keys and values; with
            grouped-query attention the key/value heads (queries may have a multiple).
        dv : int
            Value dimension.
        dtype : {float64, float32}, default=float64
            dtype of the state, and of the inputs it accepts.

        Returns
        -------
        state : DecodingState
        """
        if not hasattr(self, "projection_"):
            raise ValueError("FavorAttention has no projection yet: call fit(d) or fit(Q, K) first")
        if dv is None:
            raise ValueError("initial_state needs dv, the value dimension")
        dv = check_int(dv, "dv")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if isinstance(batch_shape, numbers.Integral):
            batch_shape = (batch_shape,)
        try:
            batch_shape = tuple(check_int(b, "batch_shape") for b in batch_shape)
        except TypeError:
            raise TypeError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
        hf = self._decoder(dtype, None)
        return DecodingState.empty(batch_shape, hf.n_out, dv, dtype, hf.fingerprint)

    def step(self, q, k, v, state=None, *, gamma=None, key_padding_mask=None):
        """Continue causal attention by ``T >= 1`` tokens; returns ``(out, state)``.

        The outputs equal those of causal attention over the whole sequence so far
        (every token the state has seen, then these), for every map whose constants
        do not depend on the data of the call (data-free maps, or adaptive maps
        after ``fit(Q, K)``).  Work ``O(T m (d + dv))`` per head, independent of the
        number of tokens seen; the state is updated in place.

        Parameters
        ----------
        q : array-like of shape (..., T, d)
            New queries.  The last leading axis (-3) holds the query heads: the state's
            key/value heads or a multiple ``g`` of them (grouped-query attention,
            query head ``i`` reads key/value head ``i // g``).
        k : array-like of shape (..., T, d)
            New keys; leading dimensions broadcast to the state's batch shape.
        v : array-like of shape (..., T, dv)
            New values.
        state : DecodingState or None, default=None
            From :meth:`initial_state`, an earlier step, or a call with
            ``return_state=True``; None starts a sequence (the state's batch shape is
            that of ``k`` and ``v``, its dtype theirs).
        gamma : float or None, default=None
            Logit scale (``1 / sqrt(d)`` if None); must stay the same along a sequence.
        key_padding_mask : array-like of bool, shape (..., T), default=None
            True marks a new key to ignore (it never enters the state).

        Returns
        -------
        out : ndarray of shape (..., T, dv)
            In the state's dtype.
        state : DecodingState
            The same object, advanced by ``T`` tokens.

        Notes
        -----
        ``T = 1`` takes a lean path: the feature products of all heads in one matrix
        product each for queries and keys, then one compiled call finishes the
        features, updates every state and emits every output in a single pass over
        the states, checking finiteness first (no thread pool, buffers reused
        between calls, shape checks cached).  This holds for the exp maps evaluated
        from a dense projection (``"positive"``, ``"hyperbolic"``, ``"optimal"``,
        ``"sderf"``, and maps with an input transform when their constants are
        shared); other maps compute their features in numpy, then one compiled
        call.  ``T > 1`` runs chunked causal attention per head from the state.
        """
        decoders = self.__dict__.get("_decoders")
        hf = None
        if decoders is not None and type(state) is DecodingState:
            hf = decoders.get((state.dtype, gamma))
        if hf is None or not (isinstance(q, np.ndarray) and q.dtype == state.dtype):
            return self._step_checked(q, k, v, state, gamma, key_padding_mask)
        if (
            not (isinstance(k, np.ndarray) and isinstance(v, np.ndarray))
            or k.dtype != state.dtype
            or v.dtype != state.dtype
            or q.shape[-1] != self.projection_.shape[1]
            or state.fingerprint != hf.fingerprint
            or hf.fmap is not get_feature_map(self.feature_map)
            or (
                key_padding_mask is not None
                and (
                    not isinstance(key_padding_mask, np.ndarray)
                    or key_padding_mask.dtype != np.bool_
                )
            )
        ):
            return self._step_checked(q, k, v, state, gamma, key_padding_mask)
        if q.shape[-2] != 1:
            out, state = self._step_block(hf, q, k, v, key_padding_mask, state)
            n_zero = None
        else:
            out, n_zero = decode(hf, q, k, v, key_padding_mask, state, zero_rows=True)
        if n_zero != 0:  # None: not counted
            warn_zero_rows(hf.fmap, out, v, key_padding_mask, True)
        return out, state

    def _step_checked(self, q, k, v, state, gamma, key_padding_mask):
        if state is not None and not isinstance(state, DecodingState):
            raise TypeError(f"state must be a DecodingState (or None), got {type(state).__name__}")
        q, k, v, mask = check_attention_arrays(q, k, v, key_padding_mask)
        d = q.shape[-1]
        if not hasattr(self, "projection_") and get_feature_map(self.feature_map).data_constants:
            raise ValueError(
                f"feature_map={get_feature_map(self.feature_map).name!r} fits its constants "
                "on the data; for decoding fit them once with fit(Q, K) on calibration data"
            )
        self._ensure_projection(d)
        if gamma is not None:
            check_logit_scale(gamma, d)
        dtype = q.dtype if state is None else state.dtype
        hf = self._decoder(dtype, gamma)
        if state is None:
            out, state = run_continuation(hf, q, k, v, mask, None)
        else:
            check_state(state, hf, q.dtype)
            if q.shape[-2] != 1:
                out, state = self._step_block(hf, q, k, v, mask, state)
            else:
                out = decode(hf, q, k, v, mask, state)
        warn_zero_rows(get_feature_map(self.feature_map), out, v, mask, True, stacklevel=4)
        return out, state

    def _step_block(self, hf, q, k, v, mask, state):
        return run_continuation(hf, q, k, v, mask, state)

    def __call__(
        self,
        Q,
        K,
        V,
        *,
        causal=None,
        gamma=None,
        key_padding_mask=None,
        method="favor",
        initial_state=None,
        return_state=False,
        return_error=False,
        n_error_rows=64,
        warn_error=DEFAULT_WARN_ERROR,
    ):
        """Attention of ``Q, K, V`` with the held projection (see :func:`favor_attention`).

        ``causal=None`` uses the instance's ``causal``.  Frozen constants (after
        ``fit(Q, K)``) are used in every mode; without them an adaptive map fits its
        constants on the current Q and K of each head (bidirectional only).
        ``initial_state``, ``return_state``, ``return_error``, ``n_error_rows`` and
        ``warn_error`` are those of :func:`favor_attention` (the error estimate's
        rows are drawn from a stream of the instance's own, seeded by
        ``random_state``, which leaves the projections unchanged).
        """
        causal = self.causal if causal is None else causal
        continued = check_continuation(
            causal, initial_state, return_state, return_error, n_error_rows, warn_error
        )
        Q, K, V, mask, batch = check_call_arrays(Q, K, V, causal, key_padding_mask, continued)
        d = Q.shape[-1]
        self._ensure_projection(d)
        plan = self._plan(d, gamma, causal, method)
        hf = None
        if continued:
            hf = self._decoder(Q.dtype if initial_state is None else initial_state.dtype, gamma)
        error = None
        if return_error:
            error = (n_error_rows, warn_error, int(self._error_rng.integers(2**31)))
        return attend(plan, Q, K, V, mask, batch, initial_state, return_state, error, hf)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_decoders", None)  # a cache (with thread-local buffers): rebuilt on demand
        return state

    def __setstate__(self, state):
        state = dict(state)
        if "projection_" in state:  # pickled before projection_ was a property
            state["_projection_matrix"] = state.pop("projection_")
        self.__dict__.update(state)
        if "_projection_matrix" in state:
            self._decoders = {}

    def __repr__(self):
        return (
            f"FavorAttention(feature_map={self.feature_map!r}, n_components={self.n_components}, "
            f"projection={self.projection!r}, causal={self.causal}, "
            f"random_state={self.random_state!r})"
        )

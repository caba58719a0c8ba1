"""One attention plan behind every FAVOR entry point: build it once, then run it.

An :class:`AttentionPlan` holds everything an attention call decides before it sees
``Q, K, V``: the feature map, its drawn projection, the logit scale ``gamma``,
causality, the algorithm and the map's data constants (one set, or one set per group
of heads).  :func:`plan_attention` is the one function that builds (and checks) a
plan; :func:`run_plan` runs it on checked arrays; :func:`head_groups` is the one
iterator over groups of heads that share a set of constants.

:func:`~favorkern.attention.favor.favor_attention`,
:class:`~favorkern.attention.layer.FavorAttention` and
:func:`favorkern.dask.favor_attention` all validate their arguments, build a plan and
run it (dask runs :func:`head_groups` and the plan's features in its graph).

How to build and run one (the arrays checked first: ``check_attention_inputs``
returns them with their broadcast batch shape)::

    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
    plan = plan_attention(feature_map, Q.shape[-1], n_components=..., causal=causal,
                          projection=..., projection_matrix=..., gamma=...,
                          constants=..., method=..., random_state=...)
    out = run_plan(plan, Q, K, V, mask, batch)   # warns and falls back as documented

A held projection (an :class:`AttentionProjection` already drawn, e.g. by a layer)
is passed as ``drawn=`` instead of ``projection_matrix``/``random_state``.  For
decoding, :meth:`AttentionPlan.head_features` gives the per-head features and the
fingerprint a :class:`~favorkern.attention.decoding.DecodingState` is checked
against.

Examples
--------
>>> import numpy as np
>>> from favorkern._validation import check_attention_inputs
>>> from favorkern.attention.plan import plan_attention, run_plan
>>> rng = np.random.default_rng(0)
>>> Q, K, V = rng.normal(scale=0.5, size=(3, 2, 40, 8))
>>> Q, K, V, mask, batch = check_attention_inputs(Q, K, V, True)
>>> plan = plan_attention("positive", 8, n_components=32, causal=True, random_state=0)
>>> plan.feature_map.name, plan.projection.matrix.shape, plan.causal
('positive', (32, 8), True)
>>> out = run_plan(plan, Q, K, V, mask, batch)
>>> from favorkern import favor_attention
>>> ref = favor_attention(Q, K, V, causal=True, n_components=32, random_state=0)
>>> bool(np.array_equal(out, ref))
True
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import _config
from .._parallel import blas_single_thread, n_threads
from .._validation import check_float_array, check_int, check_logit_scale, check_option, check_seed
from .._warnings import FeatureUnderflowWarning
from ..feature_maps import (
    FeatureMap,
    check_constants,
    fit_constants,
    get_feature_map,
    map_identity,
    map_spec,
)
from ..projections import PROJECTION_KINDS, draw_projection, draw_structured
from .bidirectional import bidirectional
from .causal import causal as run_causal
from .common import exact_is_faster, feature_chunk_rows, heads
from .decoding import DecodingState, HeadFeatures, decode
from .exact import softmax_attention
from .features import AttentionFeatures
from .values import scaled_values, unscale

__all__ = [
    "AttentionPlan",
    "AttentionProjection",
    "plan_attention",
    "run_plan",
    "attend",
    "run_continuation",
    "check_state",
    "head_groups",
    "check_constants_argument",
    "resolve_projection",
    "attention_features",
    "zero_row_mask",
    "fill_lost_rows",
    "warn_lost_rows",
    "warn_zero_rows",
    "ATTENTION_METHODS",
    "DEFAULT_N_COMPONENTS",
]

#: ``method=``: FAVOR (its causal algorithm by a measured rule, or forced), or "auto".
ATTENTION_METHODS = ("favor", "auto", "chunked", "recurrent")

#: Output width when neither ``n_components`` nor a projection matrix is given.
DEFAULT_N_COMPONENTS = 256


class AttentionProjection:
    """A drawn (or given) projection with what a feature map needs besides it.

    Attributes
    ----------
    matrix : ndarray of shape (n_projections, d)
    n_components : int
        Output width of the map.
    draws : dict
        The map's random draws besides the projection.
    sorf : tuple or None
        Factors of a structured projection (fast Walsh-Hadamard product).
    """

    def __init__(self, matrix, n_components, draws=None, sorf=None):
        self.matrix = matrix
        self.n_components = n_components
        self.draws = {} if draws is None else draws
        self.sorf = sorf


def resolve_projection(
    feature_map, projection_matrix, n_components, d, projection, random_state
) -> AttentionProjection:
    """The projection of a call: ``projection_matrix`` checked, or a fresh draw."""
    rng = check_seed(random_state)
    if projection_matrix is None:
        n_components = check_int(
            DEFAULT_N_COMPONENTS if n_components is None else n_components, "n_components"
        )
        check_option(projection, "projection", PROJECTION_KINDS)
        n_projections = feature_map.n_projections(n_components)
        sorf = None
        if projection == "structured":
            W, signs, factors = draw_structured(n_projections, d, "chi", rng)
            sorf = (signs, factors)
        else:
            W = draw_projection(n_projections, d, projection=projection, random_state=rng)
        return AttentionProjection(W, n_components, feature_map.draw(n_components, rng), sorf)
    W = check_float_array(projection_matrix, "projection_matrix", ndim=2, dtype=np.float64)
    if W.shape[1] != d:
        raise ValueError(
            f"projection_matrix must have shape (n_projections, d) with d = {d}, got {W.shape}"
        )
    if n_components is None:
        n_components = feature_map.outputs_per_projection * W.shape[0]
    n_components = check_int(n_components, "n_components")
    if feature_map.n_projections(n_components) != W.shape[0]:
        raise ValueError(
            f"n_components={n_components} needs {feature_map.n_projections(n_components)} "
            f"projections for feature map {feature_map.name!r}, but projection_matrix has "
            f"{W.shape[0]} rows"
        )
    return AttentionProjection(W, n_components, feature_map.draw(n_components, rng))


def attention_features(feature_map, proj: AttentionProjection, gamma, dtype, constants=None):
    """The :class:`~.features.AttentionFeatures` of ``feature_map`` for logits ``gamma q.k``."""
    spec = map_spec(
        feature_map,
        proj.matrix,
        n_components=proj.n_components,
        input_scale=math.sqrt(gamma),
        kernel="softmax",
        constants=constants,
        draws=proj.draws,
        sorf=proj.sorf,
    )
    return AttentionFeatures(spec, dtype)


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """What an attention call decided before seeing its arrays (built by
    :func:`plan_attention`, run by :func:`run_plan`).

    Attributes
    ----------
    feature_map : FeatureMap
        The map of the registry.
    projection : AttentionProjection
        The drawn (or given) projection, with the map's other draws.
    gamma : float
        Logit scale.
    causal : bool
    method : str
        One of :data:`ATTENTION_METHODS`.
    constants : dict or None
        Frozen data constants shared by every head; None where the map fits them per
        head on the call's own tokens (adaptive maps, bidirectional only), and for
        per-head constants.
    head_constants : tuple of dict or None
        One frozen set per group of consecutive heads (axis -3), see
        :func:`head_groups`.
    """

    feature_map: FeatureMap
    projection: AttentionProjection
    gamma: float
    causal: bool = False
    method: str = "favor"
    constants: dict | None = None
    head_constants: tuple | None = None

    @property
    def n_components(self) -> int:
        return self.projection.n_components

    def features(self, dtype, constants=None) -> AttentionFeatures:
        """The attention features for one set of constants (the shared set if None)."""
        if constants is None:
            constants = self.constants
        return attention_features(self.feature_map, self.projection, self.gamma, dtype, constants)

    @cached_property
    def fingerprint(self) -> str:
        """``identity|m=...|projection=...|...``: what a decoding state's features depend on.

        The map's identity (:func:`~favorkern.feature_maps._base.map_identity`: the
        object, not only its name), the output width ``m`` (which a stored state's
        arrays must have), a short hash of the projection and its draws, and one of the
        logit scale and the constants.
        """
        drawn = hashlib.blake2b(digest_size=8)
        matrix = self.projection.matrix
        drawn.update(f"{self.n_components}|{matrix.shape}".encode())
        drawn.update(np.ascontiguousarray(matrix, dtype=np.float64).tobytes())
        draws = self.projection.draws
        for key in sorted(draws):
            drawn.update(key.encode())
            drawn.update(np.ascontiguousarray(draws[key], dtype=np.float64).tobytes())
        rest = hashlib.blake2b(digest_size=8)
        rest.update(f"{self.gamma!r}".encode())
        for group in [self.constants or {}] + list(self.head_constants or []):
            for key in sorted(group):
                rest.update(key.encode())
                rest.update(np.ascontiguousarray(group[key], dtype=np.float64).tobytes())
        return (
            f"{map_identity(self.feature_map)}|m={self.n_components}|"
            f"projection={drawn.hexdigest()}|{rest.hexdigest()}"
        )

    def head_features(self, dtype) -> HeadFeatures:
        """The :class:`~.decoding.HeadFeatures` of causal continuation (frozen constants)."""
        fmap = self.feature_map
        if fmap.data_constants and self.constants is None and self.head_constants is None:
            raise ValueError(
                f"feature_map={fmap.name!r} fits its constants on the data: to continue a "
                "causal sequence, fit them once with FavorAttention.fit(Q, K) (or pass constants)"
            )

        def make(constants):
            return self.features(dtype, check_constants(fmap, constants))

        return HeadFeatures(fmap, make, self.constants or {}, self.head_constants, self.fingerprint)


def check_constants_argument(fmap, constants):
    """``(shared, per_head)`` from a dict, a sequence of dicts (one per group of heads)
    or None, each set checked by :func:`~favorkern.feature_maps.check_constants`."""
    if constants is None:
        return None, None
    if isinstance(constants, Mapping):
        return check_constants(fmap, dict(constants)), None
    sets = list(constants) if isinstance(constants, (list, tuple)) else None
    if not sets or not all(isinstance(c, Mapping) for c in sets):
        raise TypeError(
            "constants must be a dict or a non-empty sequence of dicts (one per head), "
            f"got {type(constants).__name__}"
        )
    return None, tuple(check_constants(fmap, dict(c)) for c in sets)


def plan_attention(
    feature_map,
    d,
    *,
    n_components=None,
    projection="orthogonal",
    projection_matrix=None,
    gamma=None,
    causal=False,
    method="favor",
    constants=None,
    random_state=None,
    drawn=None,
) -> AttentionPlan:
    """Check the parameters of an attention call and build its :class:`AttentionPlan`.

    Parameters are those of :func:`~favorkern.attention.favor.favor_attention` (``d``:
    the inputs' feature dimension).  ``constants``: a dict shared by every head, or a
    sequence of dicts, one per group of heads (:func:`head_groups`); required for
    causal attention with maps that fit data constants.  ``drawn``: an
    :class:`AttentionProjection` already drawn for ``d`` (then ``n_components``,
    ``projection``, ``projection_matrix`` and ``random_state`` are not used).
    """
    fmap = get_feature_map(feature_map)
    check_option(method, "method", ATTENTION_METHODS)
    gamma = check_logit_scale(gamma, d)
    shared, per_head = check_constants_argument(fmap, constants)
    if causal and fmap.data_constants and shared is None and per_head is None:
        raise ValueError(
            f"feature_map={fmap.name!r} fits its constants on all tokens of Q and K, so "
            "outputs would depend on later tokens: use it with causal=False, or fit "
            "the constants once on calibration data with FavorAttention.fit(Q, K)"
        )
    if drawn is None:
        drawn = resolve_projection(
            fmap, projection_matrix, n_components, d, projection, random_state
        )
    return AttentionPlan(fmap, drawn, gamma, bool(causal), method, shared, per_head)


def head_groups(n_heads, head_constants):
    """``(selector, constants)`` for each group of consecutive heads sharing a set.

    ``n_heads`` heads on the axis -3 (``None``: the inputs have no head axis, one
    set must serve them), ``g = n_heads / len(head_constants)`` consecutive heads per
    set (grouped-query calibration).  ``selector`` indexes an array of shape
    ``(..., heads, L, d)``; ``selector[:-1]`` a mask of shape ``(..., heads, L)``.

    Examples
    --------
    >>> [(s[1], c) for s, c in head_groups(4, [{"A": 0}, {"A": 1}])]
    [(slice(0, 2, None), {'A': 0}), (slice(2, 4, None), {'A': 1})]
    """
    n_sets = len(head_constants)
    if n_heads is None or n_heads % n_sets:
        if n_heads is None and n_sets == 1:
            yield (Ellipsis, slice(None), slice(None)), head_constants[0]
            return
        heads = "no head axis" if n_heads is None else f"{n_heads} heads (axis -3)"
        raise ValueError(
            f"constants has {n_sets} per-head sets, but the inputs have {heads}; the "
            "number of heads must be a multiple of the number of sets"
        )
    group = n_heads // n_sets
    for h, constants in enumerate(head_constants):
        yield (Ellipsis, slice(h * group, (h + 1) * group), slice(None), slice(None)), constants


def run_plan(plan: AttentionPlan, Q, K, V, mask, batch, *, stacklevel=3):
    """Attention of checked ``Q, K, V`` (``mask`` and ``batch`` from
    ``check_attention_inputs``) by ``plan``.

    Where float32 lost whole rows (every feature product underflowed,
    :func:`zero_row_mask`), those rows, and only those, are taken from the same plan
    run in float64 and cast back: a row is replaced on its own float32 output, which
    no later token changes, so causal outputs stay causal.  Rows that float64 loses
    too stay 0, with a :class:`~favorkern._warnings.FeatureUnderflowWarning`.
    """
    out = _run_arrays(plan, Q, K, V, mask, batch)

    def wide():  # only where float32 lost rows
        return _run_arrays(plan, *(X.astype(np.float64) for X in (Q, K, V)), mask, batch)

    count, computed = fill_lost_rows(
        plan.feature_map, out, wide, V=V, mask=mask, causal=plan.causal
    )
    warn_lost_rows(count, out, computed, stacklevel)
    return out


def fill_lost_rows(feature_map, out, recompute, *, V=None, mask=None, causal=False, by_design=None):
    """The float32 fallback: rows of ``out`` lost to float32's exponent range
    (:func:`zero_row_mask`) are taken from ``recompute()``, the same attention in
    float64, in place; returns ``(count, computed)``, the rows still 0 and the dtype
    they were computed in (for :func:`warn_lost_rows`).

    Each row is chosen by its own float32 output, which no later token changes, so
    causal outputs stay causal.  ``V``, ``mask`` and ``causal`` tell rows that are 0 by
    design (see :func:`zero_row_mask`); or ``by_design``, a boolean array
    broadcasting to ``out.shape[:-1]``, marks them directly (chunks of a dask graph,
    which see their own values only).
    """
    zero = zero_row_mask(feature_map, out, V, mask, causal, by_design)
    computed = out.dtype
    if zero is not None and out.dtype == np.float32:
        wide = recompute()
        out[zero] = wide[zero]
        zero = zero_row_mask(feature_map, out, V, mask, causal, by_design)
        computed = np.dtype(np.float64)
    return (0 if zero is None else int(np.count_nonzero(zero))), computed


def run_continuation(head_features: HeadFeatures, Q, K, V, mask, state):
    """Causal attention of the tokens ``Q, K, V`` continuing ``state`` (a new one if
    None); returns ``(out, state)``, the state updated in place."""
    if state is None:
        leads = [K.shape[:-2], V.shape[:-2]]
        if mask is not None:
            leads.append(mask.shape[:-1])
        try:
            batch = np.broadcast_shapes(*leads)
        except ValueError:
            raise ValueError(
                "the leading (batch, head) dimensions of K, V and key_padding_mask do not "
                f"broadcast: {leads}"
            ) from None
        state = DecodingState.empty(
            batch, head_features.n_out, V.shape[-1], Q.dtype, head_features.fingerprint
        )
    else:
        check_state(state, head_features, Q.dtype)
    work = math.prod(state.batch_shape) * Q.shape[-2] * head_features.n_out
    workers = n_threads() if work >= _config.ATTENTION_PARALLEL_MIN_WORK else 1
    with blas_single_thread():
        out = decode(head_features, Q, K, V, mask, state, workers)
    return out, state


def check_state(state, head_features: HeadFeatures, dtype):
    """A ``TypeError``/``ValueError`` unless ``state`` continues these features in ``dtype``."""
    if not isinstance(state, DecodingState):
        raise TypeError(f"state must be a DecodingState, got {type(state).__name__}")
    if state.fingerprint != head_features.fingerprint:
        made, here = state.fingerprint.split("|")[0], head_features.fingerprint.split("|")[0]
        if made != here:
            raise ValueError(
                f"the state was made with the feature map {made or 'of no attention'}, but "
                f"this attention uses {here} (a map replaced under its name is another "
                "map): continue the state with the attention and map that created it"
            )
        raise ValueError(
            "the state was made by another attention (projection, feature map, constants or "
            "gamma differ): continue it with the attention that created it"
        )
    if state.dtype != dtype:
        raise ValueError(
            f"the state holds {state.dtype} but the inputs are {np.dtype(dtype)}: create the "
            f"state with dtype={np.dtype(dtype).name} or convert the inputs"
        )


def attend(plan: AttentionPlan, Q, K, V, mask, batch, initial_state, return_state, error,
           head_features=None):  # fmt: skip
    """Run a checked call: the plan on the arrays, or (``batch`` None) the continuation of
    ``initial_state``; with ``error = (n_rows, warn_error, seed)`` the error estimate.

    ``head_features``: the plan's :class:`~.decoding.HeadFeatures` when the caller
    holds them (built from the plan if None).
    """
    if batch is None:
        if head_features is None:
            dtype = Q.dtype if initial_state is None else initial_state.dtype
            head_features = plan.head_features(dtype)
        out, state = run_continuation(head_features, Q, K, V, mask, initial_state)
        warn_zero_rows(plan.feature_map, out, V, mask, True, stacklevel=4)
        result = (out, state) if return_state else (out,)
    else:
        result = (run_plan(plan, Q, K, V, mask, batch, stacklevel=4),)
    if error is not None:
        result += (_estimate_error(Q, K, V, result[0], plan, mask, *error),)
    return result[0] if len(result) == 1 else result


def _estimate_error(Q, K, V, out, plan, mask, n_rows, warn_error, seed):
    from .error import estimate_checked

    return estimate_checked(
        Q, K, V, out, causal=plan.causal, gamma=plan.gamma, key_padding_mask=mask,
        n_rows=n_rows, warn_error=warn_error, random_state=np.random.default_rng(seed),
        _stacklevel=5,
    )  # fmt: skip


def _run_arrays(plan, Q, K, V, mask, batch):
    """The attention of one dtype: exact where ``"auto"`` measures it faster, else per
    set of constants (frozen, per group of heads, or fitted per head)."""
    fmap = plan.feature_map
    if (
        plan.method == "auto"
        and "softmax" in fmap.kernels
        and exact_is_faster(Q.shape[-2], K.shape[-2], plan.n_components)
    ):
        return softmax_attention(
            Q, K, V, causal=plan.causal, gamma=plan.gamma, key_padding_mask=mask
        )
    if plan.head_constants is not None:
        return _run_groups(plan, Q, K, V, mask, batch)
    if fmap.data_constants and plan.constants is None:
        return _run_adaptive(plan, Q, K, V, mask, batch)
    return _run_favor(plan, Q, K, V, mask, batch, plan.constants)


def _run_groups(plan, Q, K, V, mask, batch):
    """One frozen set of constants per group of heads (:func:`head_groups`)."""
    n_heads = batch[-1] if batch else None
    if not batch:
        ((_, constants),) = head_groups(None, plan.head_constants)
        return _run_favor(plan, Q, K, V, mask, (), constants)
    Qb, Kb, Vb = (np.broadcast_to(X, batch + X.shape[-2:]) for X in (Q, K, V))
    Mb = None if mask is None else np.broadcast_to(mask, batch + mask.shape[-1:])
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    for sl, constants in head_groups(n_heads, plan.head_constants):
        m = None if Mb is None else Mb[sl[:-1]]
        sub_batch = batch[:-1] + (out[sl].shape[-3],)
        out[sl] = _run_favor(plan, Qb[sl], Kb[sl], Vb[sl], m, sub_batch, constants)
    return out


def _run_adaptive(plan, Q, K, V, mask, batch):
    """One feature map per (batch, head), with that head's constants fitted on its own
    queries and (unmasked) keys."""
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    for q, k, v, m, idx in heads(Q, K, V, mask, batch):
        keys = k if m is None else k[~m]
        constants = fit_constants(
            plan.feature_map, q.astype(np.float64), keys.astype(np.float64),
            input_scale=math.sqrt(plan.gamma), projection=plan.projection.matrix,
        )  # fmt: skip
        out[idx] = _run_favor(plan, q, k, v, m, (), constants, causal=False)
    return out


def _run_favor(plan, Q, K, V, mask, batch, constants, causal=None):
    """FAVOR attention with one set of constants: every head through the bidirectional
    or the causal algorithm, over the worker threads."""
    fmap = plan.feature_map
    causal = plan.causal if causal is None else causal
    constants = check_constants(fmap, constants)
    Q = fmap.prepare(Q, "query", constants)
    K = fmap.prepare(K, "key", constants)
    phi = plan.features(Q.dtype, constants)
    # exp and cos features are at most 1 after their stabilizers; others are unbounded
    bounded = phi.kind in ("exp", "cos")
    V, exponents = scaled_values(V, K.shape[-2] * phi.n_out, unit=not bounded)
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    head_list = heads(Q, K, V, mask, batch)
    work = len(head_list) * (Q.shape[-2] + K.shape[-2]) * phi.n_out
    workers = n_threads() if work >= _config.ATTENTION_PARALLEL_MIN_WORK else 1
    with blas_single_thread():  # the parallelism is ours, see softmax_attention
        if causal:
            method = plan.method
            if method != "chunked" and not V.flags.writeable:
                head_list = heads(Q, K, V.copy(), mask, batch)
            run_causal(phi, head_list, out, workers, "auto" if method == "favor" else method)
        else:
            chunk = feature_chunk_rows(phi.n_out, Q.dtype)
            bidirectional(phi, head_list, out, chunk, workers)
    return unscale(out, exponents)


def zero_row_mask(feature_map, out, V, mask, causal, by_design=None):
    """Output rows that are exactly 0 because every feature product underflowed, as a
    boolean array of shape ``out.shape[:-1]``, or None where there is none.

    Cheap when nothing is wrong: only the first column is read (a strided quarter of
    the output's cache lines at dv = 64), and only rows whose first entry is 0 are
    inspected whole.  Rows whose visible keys are all masked are 0 by definition, and
    heads whose values are all 0 give 0 rows legitimately: neither is counted.  Only
    for the non-negative maps, whose normalizer is 0 exactly when every product
    ``phi(q_i) . phi(k_j)`` underflowed.  ``by_design``: a boolean array broadcasting
    to ``out.shape[:-1]`` marking the rows that are 0 by design, instead of reading
    them from ``V`` and ``mask``.
    """
    if not feature_map.nonnegative or out.size == 0:
        return None
    first = out[..., 0] == 0  # (..., Lq): a zero row starts with 0
    if not first.any():
        return None
    zero = first
    zero[first] = ~out[first].any(axis=-1)
    if not zero.any():
        return None
    if by_design is not None:
        zero &= ~np.broadcast_to(by_design, zero.shape)
        return zero if zero.any() else None
    if not _fits(V.shape[:-2] + (1,), zero.shape) or (
        mask is not None and not _fits(mask.shape[:-1] + (1,), zero.shape)
    ):
        # continued calls with grouped query heads: the outputs have more heads than V
        # and the mask, so the exclusions below cannot be matched to them
        return None
    if mask is not None:
        visible = ~mask
        seen = np.logical_or.accumulate(visible, axis=-1) if causal else visible.any(-1)[..., None]
        zero &= np.broadcast_to(seen, zero.shape) if causal else seen
    zero &= np.asarray(V.any(axis=(-2, -1)))[..., np.newaxis]
    return zero if zero.any() else None


def warn_zero_rows(feature_map, out, V, mask, causal, stacklevel=3) -> None:
    """Warn once if output rows are exactly 0 because every feature product underflowed
    (:func:`zero_row_mask`)."""
    zero = zero_row_mask(feature_map, out, V, mask, causal)
    count = 0 if zero is None else int(np.count_nonzero(zero))
    warn_lost_rows(count, out, out.dtype, stacklevel)


def warn_lost_rows(count, out, computed, stacklevel=2) -> None:
    """The warning of ``count`` zero rows of ``out``, features computed in ``computed``
    (``stacklevel`` as for :func:`warnings.warn` called by the caller)."""
    if count:
        warnings.warn(
            f"{count} of {out[..., 0].size} attention output rows are 0: every feature product "
            f"phi(q).phi(k) of those queries underflowed in {np.dtype(computed).name} (logits "
            "too large for this feature map). Lower gamma, scale Q and K down, use float64, "
            "or softmax_attention for these heads.",
            FeatureUnderflowWarning,
            stacklevel=stacklevel + 1,
        )


def _fits(shape, target) -> bool:
    """True where ``shape`` broadcasts to ``target``."""
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False

"""FAVOR+ attention: ``favor_attention`` over any registered map, and the helpers it shares.

``exp(gamma q.k)`` is replaced by ``phi(q).phi(k)`` with a feature map of the
registry (:mod:`favorkern.feature_maps`); the algorithms live in
:mod:`.bidirectional` and :mod:`.causal`, the key state in :mod:`.state`.
"""

from __future__ import annotations

import hashlib
import math
import numbers

import numpy as np

from .._parallel import blas_single_thread, n_threads
from .._validation import (
    check_attention_arrays,
    check_attention_inputs,
    check_bool,
    check_float_array,
    check_int,
    check_logit_scale,
    check_option,
    check_seed,
)
from ..feature_maps import check_constants, fit_constants, get_feature_map
from ..feature_maps._base import map_identity, map_spec
from ..projections import PROJECTION_KINDS, draw_projection, draw_structured
from .bidirectional import bidirectional
from .causal import causal as run_causal
from .common import PARALLEL_MIN_WORK, exact_is_faster, feature_chunk_rows, heads
from .decoding import DecodingState, HeadFeatures, decode
from .exact import softmax_attention
from .features import AttentionFeatures
from .values import scaled_values, unscale

__all__ = [
    "favor_attention",
    "AttentionProjection",
    "resolve_projection",
    "attention_features",
    "DecodingState",
    "METHODS",
]

#: Default ``warn_error``: the estimated median relative row error above which an
#: :class:`~favorkern._warnings.ApproximationWarning` is emitted.
DEFAULT_WARN_ERROR = 0.5

#: ``method=``: FAVOR (its causal algorithm by a measured rule, or forced), or "auto".
METHODS = ("favor", "auto", "chunked", "recurrent")

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
    fmap, projection_matrix, n_components, d, projection, random_state
) -> AttentionProjection:
    """The projection of a call: ``projection_matrix`` checked, or a fresh draw."""
    rng = check_seed(random_state)
    if projection_matrix is None:
        n_components = check_int(
            DEFAULT_N_COMPONENTS if n_components is None else n_components, "n_components"
        )
        check_option(projection, "projection", PROJECTION_KINDS)
        m = fmap.n_projections(n_components)
        sorf = None
        if projection == "structured":
            W, signs, factors = draw_structured(m, d, "chi", rng)
            sorf = (signs, factors)
        else:
            W = draw_projection(m, d, projection=projection, random_state=rng)
        return AttentionProjection(W, n_components, fmap.draw(n_components, rng), sorf)
    W = check_float_array(projection_matrix, "projection_matrix", ndim=2, dtype=np.float64)
    if W.shape[1] != d:
        raise ValueError(
            f"projection_matrix must have shape (n_projections, d) with d = {d}, got {W.shape}"
        )
    if n_components is None:
        n_components = fmap.outputs_per_projection * W.shape[0]
    n_components = check_int(n_components, "n_components")
    if fmap.n_projections(n_components) != W.shape[0]:
        raise ValueError(
            f"n_components={n_components} needs {fmap.n_projections(n_components)} projections "
            f"for feature map {fmap.name!r}, but projection_matrix has {W.shape[0]} rows"
        )
    return AttentionProjection(W, n_components, fmap.draw(n_components, rng))


def attention_features(fmap, proj: AttentionProjection, gamma, dtype, constants=None):
    """The :class:`~.features.AttentionFeatures` of ``fmap`` for logits ``gamma q.k``."""
    spec = map_spec(
        fmap,
        proj.matrix,
        n_components=proj.n_components,
        input_scale=math.sqrt(gamma),
        kernel="softmax",
        constants=constants,
        draws=proj.draws,
        sorf=proj.sorf,
    )
    return AttentionFeatures(spec, dtype)


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
        flips or huge values, THEORY.md section 7.7); ``"relu"`` ``max(w.x, 0)``
        (generalized attention, which does *not* estimate softmax attention);
        ``"optimal"`` GERF / OPRF (FAVOR++) with ``A*`` from the homogeneity
        heuristic on the current Q and K of each (batch, head); ``"saderf"``
        (FAVOR#) rescales ``q_l -> psi_l q_l``, ``k_l -> k_l / psi_l`` per dimension,
        then ``"optimal"``.  Maps with data constants fit them on all tokens, so
        they are bidirectional only.
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of the drawn projection (:func:`favorkern.draw_projection`);
        ``"structured"`` uses the fast Walsh-Hadamard product at large ``d``.
    gamma : float or None, default=None
        Logit scale; ``1 / sqrt(d)`` if None.
    projection_matrix : array-like of shape (n_projections, d), default=None
        Use these projections instead of drawing them.
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
    product underflowed), the output row is 0.  Where float32 inputs lose whole rows
    that way, the call is made again in float64 (whose exponents reach 8x further) and
    cast back; only rows that float64 loses too stay 0, with a
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
    fmap = get_feature_map(feature_map)
    check_option(method, "method", METHODS)
    continued = check_continuation(
        causal, initial_state, return_state, return_error, n_error_rows, warn_error
    )
    if continued:
        Q, K, V, mask = check_attention_arrays(Q, K, V, key_padding_mask)
    else:
        Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
    d = Q.shape[-1]
    gamma = check_logit_scale(gamma, d)
    proj = resolve_projection(fmap, projection_matrix, n_components, d, projection, random_state)
    seed = error_seed(random_state) if return_error else None
    if continued:
        if fmap.data_constants:
            raise ValueError(
                f"feature_map={fmap.name!r} fits its constants on the data: to continue a "
                "causal sequence, fit them once with FavorAttention.fit(Q, K)"
            )
        hf = head_features(fmap, proj, gamma, Q.dtype, {}, None)
        out, state = continue_from_state(hf, Q, K, V, mask, initial_state)
        warn_zero_rows(fmap, out, V, mask, True)
        result = (out, state) if return_state else (out,)
    else:
        out = float64_where_float32_underflows(
            lambda q, k, v: dispatch(q, k, v, mask, batch, fmap, proj, gamma, causal, method),
            fmap, Q, K, V, mask, causal,
        )  # fmt: skip
        result = (out,)
    if return_error:
        result += (
            estimate_error(Q, K, V, result[0], causal, gamma, mask, n_error_rows, warn_error, seed),
        )
    return result[0] if len(result) == 1 else result


def zero_rows(fmap, out, V, mask, causal) -> int:
    """How many output rows are exactly 0 because every feature product underflowed.

    Cheap when nothing is wrong: only the first column is read (a strided quarter of
    the output's cache lines at dv = 64), and only rows whose first entry is 0 are
    inspected whole.  Rows whose visible keys are all masked are 0 by definition, and
    heads whose values are all 0 give 0 rows legitimately: neither is counted.  Only
    for the non-negative maps, whose normalizer is 0 exactly when every product
    ``phi(q_i) . phi(k_j)`` underflowed.
    """
    if not fmap.nonnegative or out.size == 0:
        return 0
    first = out[..., 0] == 0  # (..., Lq): a zero row starts with 0
    if not first.any():
        return 0
    zero = first
    zero[first] = ~out[first].any(axis=-1)
    if not zero.any():
        return 0
    if not _fits(V.shape[:-2] + (1,), zero.shape) or (
        mask is not None and not _fits(mask.shape[:-1] + (1,), zero.shape)
    ):
        # continued calls with grouped query heads: the outputs have more heads than V
        # and the mask, so the exclusions below cannot be matched to them
        return 0
    if mask is not None:
        visible = ~mask
        seen = np.logical_or.accumulate(visible, axis=-1) if causal else visible.any(-1)[..., None]
        zero &= np.broadcast_to(seen, zero.shape) if causal else seen
    zero &= np.asarray(V.any(axis=(-2, -1)))[..., np.newaxis]
    return int(np.count_nonzero(zero))


def float64_where_float32_underflows(run, fmap, Q, K, V, mask, causal, stacklevel=4):
    """``run(Q, K, V)``, warning as :func:`warn_zero_rows` does; where float32's exponent
    range lost every feature product of some rows (:func:`zero_rows`), the same call in
    float64, cast back to float32 (the warning then counts the rows float64 lost).

    float64 holds logits 8x further apart (maps whose exponents spread with the data,
    such as GERF's fitted ``A``, reach float32's limit at moderate norms)."""
    out = run(Q, K, V)
    count, computed = zero_rows(fmap, out, V, mask, causal), out.dtype
    if count and out.dtype == np.float32:
        out = run(*(X.astype(np.float64) for X in (Q, K, V)))
        count, computed = zero_rows(fmap, out, V, mask, causal), out.dtype
        out = out.astype(np.float32)
    _warn_zero_rows(count, out, computed, stacklevel)
    return out


def warn_zero_rows(fmap, out, V, mask, causal, stacklevel=3) -> None:
    """Warn once if output rows are exactly 0 because every feature product underflowed
    (:func:`zero_rows`)."""
    _warn_zero_rows(zero_rows(fmap, out, V, mask, causal), out, out.dtype, stacklevel + 1)


def _warn_zero_rows(count, out, computed, stacklevel) -> None:
    """The warning of ``count`` zero rows of ``out``, features computed in ``computed``."""
    if count:
        import warnings

        from .._warnings import FeatureUnderflowWarning

        warnings.warn(
            f"{count} of {out[..., 0].size} attention output rows are 0: every feature product "
            f"phi(q).phi(k) of those queries underflowed in {np.dtype(computed).name} (logits "
            "too large for this feature map). Lower gamma, scale Q and K down, use float64, "
            "or softmax_attention for these heads.",
            FeatureUnderflowWarning,
            stacklevel=stacklevel,
        )


def _fits(shape, target) -> bool:
    """True where ``shape`` broadcasts to ``target``."""
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


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


def continue_from_state(hf, Q, K, V, mask, state):
    """Causal attention of the tokens ``Q, K, V`` continuing ``state`` (a new one if None)."""
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
        state = DecodingState.empty(batch, hf.n_out, V.shape[-1], Q.dtype, hf.fingerprint)
    else:
        check_state(state, hf, Q.dtype)
    work = prod_shape(state.batch_shape) * Q.shape[-2] * hf.n_out
    workers = n_threads() if work >= PARALLEL_MIN_WORK else 1
    with blas_single_thread():
        out = decode(hf, Q, K, V, mask, state, workers)
    return out, state


def prod_shape(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def check_state(state, hf, dtype):
    if not isinstance(state, DecodingState):
        raise TypeError(f"state must be a DecodingState, got {type(state).__name__}")
    if state.fingerprint != hf.fingerprint:
        made, here = state.fingerprint.split("|")[0], hf.fingerprint.split("|")[0]
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


def _fingerprint(fmap, proj, gamma, constants, head_constants) -> str:
    """``identity|m=...|projection=...|...``: what the features of a state depend on.

    The map's identity (:func:`~favorkern.feature_maps._base.map_identity`, the
    object, not only its name), the output width ``m`` (which a stored state's arrays
    must have), a short hash of the projection and its draws, and one of the logit
    scale and the constants.
    """
    drawn = hashlib.blake2b(digest_size=8)
    drawn.update(f"{proj.n_components}|{proj.matrix.shape}".encode())
    drawn.update(np.ascontiguousarray(proj.matrix, dtype=np.float64).tobytes())
    for key in sorted(proj.draws):
        drawn.update(key.encode())
        drawn.update(np.ascontiguousarray(proj.draws[key], dtype=np.float64).tobytes())
    rest = hashlib.blake2b(digest_size=8)
    rest.update(f"{float(gamma)!r}".encode())
    for group in [constants] + list(head_constants or []):
        for key in sorted(group):
            rest.update(key.encode())
            rest.update(np.ascontiguousarray(group[key], dtype=np.float64).tobytes())
    return (
        f"{map_identity(fmap)}|m={proj.n_components}|projection={drawn.hexdigest()}|"
        f"{rest.hexdigest()}"
    )


def head_features(fmap, proj, gamma, dtype, constants, head_constants) -> HeadFeatures:
    """The :class:`~.decoding.HeadFeatures` of a projection (with frozen constants)."""

    def make(c):
        return attention_features(fmap, proj, gamma, dtype, check_constants(fmap, c))

    return HeadFeatures(
        fmap, make, constants, head_constants,
        _fingerprint(fmap, proj, gamma, constants, head_constants),
    )  # fmt: skip


def error_seed(random_state):
    """A seed for the rows sampled by the error estimate, independent of the projection."""
    if random_state is None or isinstance(random_state, numbers.Integral):
        return random_state
    return int(check_seed(random_state).randint(2**31))


def estimate_error(Q, K, V, out, causal, gamma, mask, n_rows, warn_error, seed):
    from .error import estimate_checked

    return estimate_checked(
        Q, K, V, out, causal=causal, gamma=gamma, key_padding_mask=mask, n_rows=n_rows,
        warn_error=warn_error, random_state=np.random.default_rng(seed), _stacklevel=4,
    )  # fmt: skip


def dispatch(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, constants=None):
    """Validated inputs to the right algorithm (shared by favor_attention and FavorAttention)."""
    if (
        method == "auto"
        and "softmax" in fmap.kernels
        and exact_is_faster(Q.shape[-2], K.shape[-2], proj.n_components)
    ):
        return softmax_attention(Q, K, V, causal=causal, gamma=gamma, key_padding_mask=mask)
    if fmap.data_constants and constants is None:
        if causal:
            raise ValueError(
                f"feature_map={fmap.name!r} fits its constants on all tokens of Q and K, so "
                "outputs would depend on later tokens: use it with causal=False, or fit "
                "the constants once on calibration data with FavorAttention.fit(Q, K)"
            )
        return _favor_adaptive(Q, K, V, mask, batch, fmap, proj, gamma, method)
    return _favor(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, constants)


def _favor_adaptive(Q, K, V, mask, batch, fmap, proj, gamma, method):
    """One feature map per (batch, head), with that head's fitted constants.

    Masked keys are left out of the fit.
    """
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    for q, k, v, m, idx in heads(Q, K, V, mask, batch):
        keys = k if m is None else k[~m]
        constants = fit_constants(
            fmap, q.astype(np.float64), keys.astype(np.float64), input_scale=math.sqrt(gamma),
            projection=proj.matrix,
        )  # fmt: skip
        out[idx] = _favor(q, k, v, m, (), fmap, proj, gamma, False, method, constants)
    return out


def _favor(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, constants=None):
    constants = check_constants(fmap, constants)
    Q = fmap.prepare(Q, "query", constants)
    K = fmap.prepare(K, "key", constants)
    features = attention_features(fmap, proj, gamma, Q.dtype, constants)
    # exp and cos features are at most 1 after their stabilizers; others are unbounded
    bounded = features.kind in ("exp", "cos")
    V, exponents = scaled_values(V, K.shape[-2] * features.n_out, unit=not bounded)
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    head_list = heads(Q, K, V, mask, batch)
    work = len(head_list) * (Q.shape[-2] + K.shape[-2]) * features.n_out
    workers = n_threads() if work >= PARALLEL_MIN_WORK else 1
    with blas_single_thread():  # the parallelism is ours, see softmax_attention
        if causal:
            if method != "chunked" and not V.flags.writeable:
                head_list = heads(Q, K, V.copy(), mask, batch)
            run_causal(features, head_list, out, workers, "auto" if method == "favor" else method)
        else:
            chunk = feature_chunk_rows(features.n_out, Q.dtype)
            bidirectional(features, head_list, out, chunk, workers)
    return unscale(out, exponents)


def dispatch_per_head(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, head_constants):
    """Attention with one frozen set of constants per head (the axis -3 of ``batch``).

    ``g = heads / len(head_constants)`` consecutive heads share a set (grouped-query
    calibration).
    """
    n_sets = len(head_constants)
    heads = batch[-1] if batch else 1
    if heads % n_sets:
        raise ValueError(
            f"the constants were fitted for {n_sets} heads, but the inputs have {heads} heads "
            "(axis -3); the count must be a multiple"
        )
    if not batch:
        return _favor(Q, K, V, mask, (), fmap, proj, gamma, causal, method, head_constants[0])
    group = heads // n_sets
    Qb = np.broadcast_to(Q, batch + Q.shape[-2:])
    Kb = np.broadcast_to(K, batch + K.shape[-2:])
    Vb = np.broadcast_to(V, batch + V.shape[-2:])
    Mb = None if mask is None else np.broadcast_to(mask, batch + mask.shape[-1:])
    out = np.empty(batch + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype)
    sub_batch = batch[:-1] + (group,)
    for h in range(n_sets):
        sl = (Ellipsis, slice(h * group, (h + 1) * group), slice(None), slice(None))
        m = None if Mb is None else Mb[sl[:-1]]
        out[sl] = _favor(
            Qb[sl], Kb[sl], Vb[sl], m, sub_batch, fmap, proj, gamma, causal, method,
            head_constants[h],
        )  # fmt: skip
    return out

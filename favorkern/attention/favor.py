"""FAVOR+ attention: ``favor_attention`` and ``FavorAttention``, over any registered map.

``exp(gamma q.k)`` is replaced by ``phi(q).phi(k)`` with a feature map of the
registry (:mod:`favorkern.feature_maps`); the algorithms live in
:mod:`.bidirectional` and :mod:`.causal`, the key state in :mod:`.state`.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils import check_random_state

from ..feature_maps._evaluate import blas_single_thread, n_threads
from .._validation import (
    check_attention_inputs,
    check_float_array,
    check_int,
    check_logit_scale,
    check_option,
)
from ..feature_maps import check_constants, get_feature_map
from ..projections import PROJECTION_KINDS, draw_projection, draw_structured
from .bidirectional import bidirectional
from .causal import causal as run_causal
from .common import PARALLEL_MIN_WORK, exact_is_faster, feature_chunk_rows, heads
from .exact import softmax_attention
from .features import AttentionFeatures

__all__ = [
    "favor_attention",
    "FavorAttention",
    "AttentionProjection",
    "resolve_projection",
    "attention_features",
    "METHODS",
]

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
    rng = check_random_state(random_state)
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
    spec = fmap.spec(
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
        kernel), else as ``"favor"``.  Exact attention is what FAVOR estimates, so
        ``"auto"`` never gives a worse answer, but its result then does not depend
        on the projection.

    Returns
    -------
    out : ndarray of shape (..., Lq, dv)
        float32 if Q, K and V are float32, else float64.

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
    product underflowed, e.g. for huge norms in float32), the output row is 0.

    Causal ``method="favor"`` always uses the chunked products (256-row chunks; the
    recurrence measured no faster here): with at least one (batch, head) per worker
    thread each thread runs whole heads; otherwise each head is split into one
    contiguous range per thread, the ranges' key states are computed in parallel and
    prefix-merged (each range starts from the state of the keys before it), and the
    ranges then run in parallel.  ``method="recurrent"`` runs the numba recurrence,
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
    Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
    d = Q.shape[-1]
    fmap = get_feature_map(feature_map)
    check_option(method, "method", METHODS)
    gamma = check_logit_scale(gamma, d)
    proj = resolve_projection(fmap, projection_matrix, n_components, d, projection, random_state)
    return _dispatch(Q, K, V, mask, batch, fmap, proj, gamma, causal, method)


def _dispatch(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, constants=None):
    """Validated inputs to the right algorithm (shared by favor_attention and FavorAttention)."""
    if method == "auto" and "softmax" in fmap.kernels and exact_is_faster(
        Q.shape[-2], K.shape[-2], proj.n_components
    ):
        return softmax_attention(Q, K, V, causal=causal, gamma=gamma, key_padding_mask=mask)
    if fmap.data_constants and constants is None:
        if causal:
            raise ValueError(
                f"feature_map={fmap.name!r} fits its constants on all tokens of Q and K, so "
                "outputs would depend on later tokens: use it with causal=False"
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
        constants = fmap.fit(
            q.astype(np.float64), keys.astype(np.float64), input_scale=math.sqrt(gamma)
        )
        out[idx] = _favor(q, k, v, m, (), fmap, proj, gamma, False, method, constants)
    return out


def _favor(Q, K, V, mask, batch, fmap, proj, gamma, causal, method, constants=None):
    constants = check_constants(fmap, constants)
    Q = fmap.prepare(Q, "query", constants)
    K = fmap.prepare(K, "key", constants)
    features = attention_features(fmap, proj, gamma, Q.dtype, constants)
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
    return out


class FavorAttention:
    """FAVOR+ attention holding one random projection across calls.

    The projection is drawn on the first call for the ``d`` it sees (or by
    :meth:`fit`) and kept until :meth:`redraw`; calls then take the arguments of
    :func:`favor_attention`.

    Parameters
    ----------
    n_components : int, default=256
        Output width of the feature map (paired maps use ``ceil(n_components / 2)``
        projections).
    feature_map : str or FeatureMap, default="positive"
        A map of the registry (see :func:`favor_attention`).
    projection : {"orthogonal", "gaussian", "simplex", "structured"}, default="orthogonal"
        Kind of projection (:func:`favorkern.draw_projection`).
    causal : bool, default=False
        Default for the ``causal`` argument of calls.
    random_state : int, RandomState instance or None, default=None
        Seed; redraws continue the same random stream, so a seeded instance gives
        the same sequence of projections.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, d)
        The current projection (after the first call or :meth:`fit`).

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
    >>> bool(np.array_equal(out, attention.redraw()(Q, K, V)))
    False
    """

    def __init__(
        self,
        n_components=256,
        feature_map="positive",
        projection="orthogonal",
        causal=False,
        random_state=None,
    ):
        self.n_components = n_components
        self.feature_map = feature_map
        self.projection = projection
        self.causal = causal
        self.random_state = random_state

    def fit(self, d):
        """Draw a projection for inputs of dimension ``d``; returns ``self``."""
        d = check_int(d, "d")
        check_int(self.n_components, "n_components")
        get_feature_map(self.feature_map)
        check_option(self.projection, "projection", PROJECTION_KINDS)
        self._rng = check_random_state(self.random_state)
        self._draw(d)
        return self

    def redraw(self):
        """Draw a new projection for the same ``d``; returns ``self``."""
        if not hasattr(self, "projection_"):
            raise ValueError("FavorAttention has no projection yet: call it or fit(d) first")
        self._draw(self.projection_.shape[1])
        return self

    def _draw(self, d):
        fmap = get_feature_map(self.feature_map)
        self._projection = resolve_projection(
            fmap, None, self.n_components, d, self.projection, self._rng
        )
        self.projection_ = self._projection.matrix

    def __call__(self, Q, K, V, *, causal=None, gamma=None, key_padding_mask=None, method="favor"):
        """Attention of ``Q, K, V`` with the held projection (see :func:`favor_attention`).

        ``causal=None`` uses the instance's ``causal``.
        """
        causal = self.causal if causal is None else causal
        Q, K, V, mask, batch = check_attention_inputs(Q, K, V, causal, key_padding_mask)
        d = Q.shape[-1]
        if not hasattr(self, "projection_"):
            self.fit(d)
        elif self.projection_.shape[1] != d:
            raise ValueError(
                f"Q has d = {d} features but the projection was drawn for "
                f"d = {self.projection_.shape[1]}; call fit({d}) to draw a new one"
            )
        check_option(method, "method", METHODS)
        gamma = check_logit_scale(gamma, d)
        fmap = get_feature_map(self.feature_map)
        proj = self._projection
        if proj.matrix is not self.projection_:  # projection_ was replaced by hand
            proj = resolve_projection(fmap, self.projection_, None, d, self.projection, self._rng)
        return _dispatch(Q, K, V, mask, batch, fmap, proj, gamma, causal, method)

    def __repr__(self):
        return (
            f"FavorAttention(n_components={self.n_components}, feature_map={self.feature_map!r}, "
            f"projection={self.projection!r}, causal={self.causal}, "
            f"random_state={self.random_state!r})"
        )

"""Random-feature transformers with the scikit-learn estimator API.

:class:`RandomFeatures` runs any map of the registry (:mod:`favorkern.feature_maps`)
by name; the named classes are the same estimator with the map fixed.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import int_interval
from .feature_maps import (
    FeatureMap,
    GeneralizedFeatureMap,
    apply_feature_map,
    check_constants,
    fit_constants,
    get_feature_map,
    input_scale,
    map_spec,
)
from .feature_maps.generalized import FUNCTIONS
from .feature_maps.trigonometric import FREQUENCIES, TrigonometricFeatureMap
from .projections import NORM_KINDS, PROJECTION_KINDS, draw_projection, draw_structured

__all__ = [
    "RandomFeatures",
    "PositiveRandomFeatures",
    "HyperbolicRandomFeatures",
    "TrigonometricRandomFeatures",
    "GeneralizedRandomFeatures",
    "OptimalPositiveRandomFeatures",
]

KERNELS = ("softmax", "rbf")


class RandomFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Random features of any registered feature map, as a scikit-learn transformer.

    ``phi(x).phi(y)`` estimates the kernel ``k(x, y)`` for the map named by
    ``feature_map`` (see :func:`favorkern.feature_maps.feature_map_names`), with the
    projection drawn by :func:`favorkern.draw_projection`.

    Parameters
    ----------
    feature_map : str or FeatureMap, default="positive"
        A registered map name (``"positive"``, ``"hyperbolic"``, ``"trigonometric"``,
        ``"relu"``, ``"optimal"``, ``"saderf"``, or one registered by user code) or a
        :class:`~favorkern.feature_maps.FeatureMap` instance.
    n_components : int, default=256
        Output width.  Paired maps (two outputs per projection) use
        ``ceil(n_components / 2)`` projections.
    kernel : {"softmax", "rbf"}, default="softmax"
        ``"softmax"``: ``k(x, y) = exp(gamma * x.y)``; ``"rbf"``:
        ``k(x, y) = exp(-gamma * |x - y|^2)``.  Must be a kernel the map estimates;
        maps with a kernel of their own (``"relu"``) take the default only.
    gamma : float, default=1.0
        Kernel scale, > 0.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        How the projection rows are drawn (see :func:`favorkern.draw_projection`).
    norms : {"chi", "fixed"}, default="chi"
        Row lengths: ``"chi"`` unbiased, ``"fixed"`` (``sqrt(d)``) the regularized
        SMREG variant.
    random_state : int, RandomState instance or None, default=None
        Seed of the projection; the same seed gives bit-identical features.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, n_features_in_)
        The random projection (float64), before gamma scaling.
    constants_ : dict
        Data constants fitted on ``X`` (empty for data-free maps).
    draws_ : dict
        Random draws besides the projection (e.g. a random phase).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    Notes
    -----
    ``transform`` uses the state fitted by ``fit`` (projection, width, kernel and
    gamma): parameters changed with ``set_params`` take effect at the next ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import RandomFeatures, softmax_kernel
    >>> X = np.random.default_rng(0).normal(scale=0.1, size=(5, 8))
    >>> rf = RandomFeatures("hyperbolic", n_components=4096, random_state=0).fit(X)
    >>> Z = rf.transform(X)
    >>> Z.shape, bool(np.abs(Z @ Z.T - softmax_kernel(X)).max() < 0.05)
    ((5, 4096), True)
    """

    _parameter_constraints: dict = {
        "feature_map": [str, FeatureMap],
        "n_components": [int_interval(1)],
        "kernel": [StrOptions(set(KERNELS))],
        "gamma": [Interval(Real, 0.0, None, closed="neither")],
        "projection": [StrOptions(set(PROJECTION_KINDS))],
        "norms": [StrOptions(set(NORM_KINDS))],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        feature_map="positive",
        n_components=256,
        *,
        kernel="softmax",
        gamma=1.0,
        projection="orthogonal",
        norms="chi",
        random_state=None,
    ):
        self.feature_map = feature_map
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.projection = projection
        self.norms = norms
        self.random_state = random_state

    # -- the map ---------------------------------------------------------------
    def _get_feature_map(self) -> FeatureMap:
        return get_feature_map(self.feature_map)

    def _kernel(self, fmap) -> str:
        kernel = getattr(self, "kernel", "softmax")
        if fmap.kernels and kernel not in fmap.kernels:
            raise ValueError(
                f"kernel must be one of {list(fmap.kernels)} for feature map {fmap.name!r}, "
                f"got {kernel!r}"
            )
        if not fmap.kernels and kernel != "softmax":
            raise ValueError(
                f"feature map {fmap.name!r} estimates a kernel of its own: kernel={kernel!r} "
                "does not apply (leave the default)"
            )
        return kernel

    def _fit_constants(self, fmap, X, scale) -> dict:
        """Data constants of the map (subclasses may fix them by parameter)."""
        return fit_constants(fmap, X, input_scale=scale, projection=self.projection_)

    def _n_projections(self) -> int:
        return self._get_feature_map().n_projections(self.n_components)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Draw the random projection (and fit the map's data constants) on ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; data-free maps use only its number of features (and names).
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        fmap = self._get_feature_map()
        kernel = self._kernel(fmap)
        scale = input_scale(kernel, self.gamma) if fmap.kernels else float(np.sqrt(self.gamma))
        random_state = check_random_state(self.random_state)
        n_projections = fmap.n_projections(self.n_components)
        self._sorf = None
        if self.projection == "structured":
            # Same draws as draw_projection, keeping the factors for the fast transform.
            self.projection_, signs, factors = draw_structured(
                n_projections, X.shape[1], self.norms, random_state
            )
            self._sorf = (signs, factors, self.projection_)
        else:
            self.projection_ = draw_projection(
                n_projections,
                X.shape[1],
                projection=self.projection,
                norms=self.norms,
                random_state=random_state,
            )
        self.draws_ = fmap.draw(self.n_components, random_state)
        self.constants_ = check_constants(fmap, self._fit_constants(fmap, X, scale))
        self._fitted_map = (fmap, kernel, scale, int(self.n_components))
        self._n_features_out = self.n_components
        return self

    def _sorf_factors(self):
        """(signs, row_factors) of a structured projection drawn by ``fit``, else None."""
        sorf = getattr(self, "_sorf", None)
        if sorf is None:
            return None
        signs, factors, projection = sorf
        if projection is not self.projection_:  # projection_ was replaced by hand
            return None
        return signs, factors

    def _spec(self):
        """The fitted map's :class:`~favorkern.feature_maps.FeatureMapSpec`."""
        fmap, kernel, scale, n_components = self._fitted_map
        return map_spec(
            fmap,
            self.projection_,
            n_components=n_components,
            input_scale=scale,
            kernel=kernel,
            constants=self.constants_,
            draws=self.draws_,
            sorf=self._sorf_factors(),
        )

    def transform(self, X):
        """Map ``X`` to random features.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input; float32 stays float32, other numeric input becomes float64.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            ``X_new @ Y_new.T`` estimates the kernel matrix.
        """
        check_is_fitted(self)
        X = validate_data(
            self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False, order="C"
        )
        return apply_feature_map(X, self._spec())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class _NamedRandomFeatures(RandomFeatures):
    """A :class:`RandomFeatures` with the map fixed by the class (``_map_name``)."""

    _map_name = ""
    _parameter_constraints: dict = {
        key: value
        for key, value in RandomFeatures._parameter_constraints.items()
        if key != "feature_map"
    }

    def __init__(
        self,
        n_components=256,
        *,
        kernel="softmax",
        gamma=1.0,
        projection="orthogonal",
        norms="chi",
        random_state=None,
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.projection = projection
        self.norms = norms
        self.random_state = random_state

    def _get_feature_map(self):
        return get_feature_map(self._map_name)


class PositiveRandomFeatures(_NamedRandomFeatures):
    """Positive random features (FAVOR+) for the softmax and Gaussian kernels.

    ``phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m)`` with ``x' = sqrt(gamma) x``
    (softmax) estimates ``exp(gamma x.y)`` without bias and with non-negative
    values (Performer, Lemma 1); for ``kernel="rbf"``, ``x' = sqrt(2 gamma) x``
    and the exponent is ``W x' - |x'|^2``.

    Parameters
    ----------
    n_components : int, default=256
        Output width = number of projections ``m``.
    kernel : {"softmax", "rbf"}, default="softmax"
        ``"softmax"``: ``k(x, y) = exp(gamma * x.y)``.
        ``"rbf"``: ``k(x, y) = exp(-gamma * |x - y|^2)``.
    gamma : float, default=1.0
        Kernel scale, > 0.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        How the projection rows are drawn (see :func:`favorkern.draw_projection`).
        Orthogonal rows never increase the mean squared error of the exp-type
        estimators (Performer, Theorem 2) and usually reduce it.
    norms : {"chi", "fixed"}, default="chi"
        Row lengths of the projection.  ``"chi"`` gives an unbiased estimator;
        ``"fixed"`` (length ``sqrt(d)``) estimates the regularized kernel SMREG,
        which is biased for ``kernel``.
    random_state : int, RandomState instance or None, default=None
        Seed of the projection; the same seed gives bit-identical features.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features_in_)
        The random projection ``W`` (float64), before gamma scaling.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    HyperbolicRandomFeatures : Two outputs per projection, lower variance.
    TrigonometricRandomFeatures : Random Fourier features (sin/cos).
    RandomFeatures : Any registered feature map by name.
    sklearn.kernel_approximation.RBFSampler : Random Fourier features with random phases.

    Notes
    -----
    Per-pair mean squared error (iid projections, softmax kernel):
    ``MSE = exp(|z|^2) SM(x, y)^2 (1 - exp(-|z|^2)) / m`` with ``z = x' + y'``
    (Performer, Lemma 2): it vanishes where the kernel is small, unlike
    trigonometric features.  The exponent is evaluated before ``exp`` and checked
    for overflow only when it can exceed the dtype's range.  ``transform`` uses the
    fitted state: parameters changed with ``set_params`` apply at the next ``fit``.

    References
    ----------
    K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures, softmax_kernel
    >>> X = np.random.default_rng(0).normal(scale=0.1, size=(5, 8))
    >>> prf = PositiveRandomFeatures(n_components=4096, random_state=0).fit(X)
    >>> Z = prf.transform(X)
    >>> Z.shape
    (5, 4096)
    >>> bool(np.abs(Z @ Z.T - softmax_kernel(X)).max() < 0.05)
    True
    """

    _map_name = "positive"


class HyperbolicRandomFeatures(_NamedRandomFeatures):
    """Hyperbolic positive random features: ``exp(+u)`` and ``exp(-u)`` per projection.

    ``phi(x) = exp(-|x'|^2/2) [exp(W x'), exp(-W x')] / sqrt(2 p)`` estimates the
    softmax kernel ``exp(gamma x.y)`` (or, with ``kernel="rbf"``, the Gaussian
    kernel) without bias; its per-pair MSE is ``(1 - exp(-|z|^2)) / 2`` times that of
    :class:`PositiveRandomFeatures` with the same number ``p`` of projections
    (Performer, Lemma 2).  Outputs are ordered ``[exp(+u_1..u_p), exp(-u_1..u_p)]``.

    Parameters
    ----------
    n_components : int, default=256
        Output width.  Each projection gives two outputs, so ``n_components // 2``
        projections are paired; when ``n_components`` is odd one more projection
        gives a single output ``exp(+u)``, and every projection gets weight
        ``1 / ceil(n_components / 2)`` so that the estimate stays unbiased.
    kernel : {"softmax", "rbf"}, default="softmax"
        ``"softmax"``: ``k(x, y) = exp(gamma * x.y)``.
        ``"rbf"``: ``k(x, y) = exp(-gamma * |x - y|^2)``.
    gamma : float, default=1.0
        Kernel scale, > 0.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        How the projection rows are drawn (see :func:`favorkern.draw_projection`).
    norms : {"chi", "fixed"}, default="chi"
        Row lengths: ``"chi"`` unbiased, ``"fixed"`` the SMREG variant.
    random_state : int, RandomState instance or None, default=None
        Seed of the projection; the same seed gives bit-identical features.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, n_features_in_)
        The random projection ``W`` (float64), before gamma scaling;
        ``n_projections = ceil(n_components / 2)``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    PositiveRandomFeatures : One output per projection.

    References
    ----------
    K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import HyperbolicRandomFeatures
    >>> X = np.random.default_rng(0).normal(scale=0.3, size=(5, 8))
    >>> Z = HyperbolicRandomFeatures(n_components=7, random_state=0).fit_transform(X)
    >>> Z.shape, bool((Z > 0).all())
    ((5, 7), True)
    """

    _map_name = "hyperbolic"


class TrigonometricRandomFeatures(_NamedRandomFeatures):
    """Trigonometric (sin/cos) random features; orthogonal random Fourier features for rbf.

    ``phi(x) = h(x) [cos(W x'), sin(W x')] / sqrt(p)``: for ``kernel="rbf"``,
    ``x' = sqrt(2 gamma) x`` and ``h = 1`` (random Fourier features, Rahimi & Recht
    2007; orthogonal: Yu et al. 2016); for ``kernel="softmax"``, ``x' = sqrt(gamma) x``
    and ``h(x) = exp(|x'|^2 / 2)``, which overflows for large norms (a
    ``FeatureOverflowWarning`` says so).

    Parameters
    ----------
    n_components : int, default=256
        Output width.  Each projection gives two outputs, so ``n_components // 2``
        projections are paired; when ``n_components`` is odd one more projection
        gives a single output, ``sqrt(2) cos(w.x' + b)`` with a uniform random phase
        ``b``, and every projection gets weight ``1 / ceil(n_components / 2)`` so
        that the estimate stays unbiased.
    kernel : {"softmax", "rbf"}, default="softmax"
        ``"softmax"``: ``k(x, y) = exp(gamma * x.y)``.
        ``"rbf"``: ``k(x, y) = exp(-gamma * |x - y|^2)``.
    gamma : float, default=1.0
        Kernel scale, > 0.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        How the projection rows are drawn (see :func:`favorkern.draw_projection`).
    norms : {"chi", "fixed"}, default="chi"
        Row lengths: ``"chi"`` unbiased, ``"fixed"`` the SMREG variant.
    frequencies : {"paired", "distinct"}, default="paired"
        ``"paired"``: ``cos`` and ``sin`` of ``n_components / 2`` directions, the least
        kernel error per column.  ``"distinct"``: ``sqrt(2/m) cos(w_j.x' + b_j)`` of
        ``m = n_components`` directions with uniform random phases ``b_j`` (as
        :class:`sklearn.kernel_approximation.RBFSampler`, over ``projection``'s
        directions): twice the frequencies for the same width, the better choice as
        features of a regression (see the user guide's "Which features").
    random_state : int, RandomState instance or None, default=None
        Seed of the projection and the phases.

    Attributes
    ----------
    projection_ : ndarray of shape (n_projections, n_features_in_)
        The random projection ``W`` (float64), before gamma scaling;
        ``n_projections = ceil(n_components / 2)`` (``n_components`` for distinct
        frequencies).
    random_offset_ : ndarray of shape (n_components % 2,) or (n_components,)
        The random phase of the unpaired output (empty when ``n_components`` is
        even), or of every output for distinct frequencies.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.kernel_approximation.RBFSampler : cos features with random phases only.

    Notes
    -----
    Trigonometric features can be negative, so in attention their normalizer can
    vanish; their MSE does not vanish where the kernel is small (Performer, Lemma 2).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics.pairwise import rbf_kernel
    >>> from favorkern import TrigonometricRandomFeatures
    >>> X = np.random.default_rng(0).normal(size=(5, 8))
    >>> trf = TrigonometricRandomFeatures(4096, kernel="rbf", gamma=0.1, random_state=0)
    >>> Z = trf.fit_transform(X)
    >>> bool(np.abs(Z @ Z.T - rbf_kernel(X, gamma=0.1)).max() < 0.05)
    True
    >>> distinct = TrigonometricRandomFeatures(
    ...     4096, kernel="rbf", gamma=0.1, frequencies="distinct", random_state=0)
    >>> distinct.fit(X).projection_.shape, distinct.random_offset_.shape
    ((4096, 8), (4096,))
    """

    _map_name = "trigonometric"
    _parameter_constraints: dict = {
        **_NamedRandomFeatures._parameter_constraints,
        "frequencies": [StrOptions(set(FREQUENCIES))],
    }

    def __init__(
        self,
        n_components=256,
        *,
        kernel="softmax",
        gamma=1.0,
        projection="orthogonal",
        norms="chi",
        frequencies="paired",
        random_state=None,
    ):
        super().__init__(
            n_components,
            kernel=kernel,
            gamma=gamma,
            projection=projection,
            norms=norms,
            random_state=random_state,
        )
        self.frequencies = frequencies

    def _get_feature_map(self):
        if self.frequencies == "distinct":
            return TrigonometricFeatureMap("distinct")
        return get_feature_map(self._map_name)

    @property
    def random_offset_(self):
        check_is_fitted(self)
        return self.draws_["offset"]


class GeneralizedRandomFeatures(_NamedRandomFeatures):
    """Generalized random features ``phi(x) = f(W x') / sqrt(m)``, ``x' = sqrt(gamma) x``.

    The feature maps of the Performer's generalized attention (section 2.2):
    ``phi(x).phi(y)`` estimates ``k(x, y) = E_w[f(w.x') f(w.y')]`` with
    ``w ~ N(0, I)``.  For ``f = relu`` that is the arc-cosine kernel of order 1,
    ``|x'||y'| (sin t + (pi - t) cos t) / (2 pi)`` (Cho & Saul, 2009); for
    ``identity`` the linear kernel ``x'.y'``; for ``abs``,
    ``(2/pi)|x'||y'| (sqrt(1 - c^2) + c arcsin c)`` with ``c = cos t``; for
    ``exp``, ``exp(|x' + y'|^2 / 2)``.

    Parameters
    ----------
    n_components : int, default=256
        Output width = number of projections.
    function : {"relu", "abs", "exp", "identity"} or callable, default="relu"
        The elementwise map ``f``.  A callable receives the ``(n_samples,
        n_components)`` array of projections (it may modify it in place) and must
        return an array of the same shape.
    gamma : float, default=1.0
        Input scale, > 0.
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        How the projection rows are drawn (see :func:`favorkern.draw_projection`).
    norms : {"chi", "fixed"}, default="chi"
        Row lengths (see :func:`favorkern.draw_projection`).
    random_state : int, RandomState instance or None, default=None
        Seed of the projection.

    Attributes
    ----------
    projection_ : ndarray of shape (n_components, n_features_in_)
        The random projection ``W`` (float64), before gamma scaling.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import GeneralizedRandomFeatures
    >>> X = np.random.default_rng(0).normal(size=(4, 8))
    >>> Z = GeneralizedRandomFeatures(4096, function="identity", random_state=0).fit_transform(X)
    >>> bool(np.abs(Z @ Z.T - X @ X.T).max() < 1.0)
    True
    """

    _parameter_constraints: dict = {
        key: value
        for key, value in _NamedRandomFeatures._parameter_constraints.items()
        if key != "kernel"
    }
    _parameter_constraints["function"] = [StrOptions(set(FUNCTIONS)), callable]

    def __init__(
        self,
        n_components=256,
        *,
        function="relu",
        gamma=1.0,
        projection="orthogonal",
        norms="chi",
        random_state=None,
    ):
        self.n_components = n_components
        self.function = function
        self.gamma = gamma
        self.projection = projection
        self.norms = norms
        self.random_state = random_state

    def _get_feature_map(self):
        return GeneralizedFeatureMap(self.function)


class OptimalPositiveRandomFeatures(_NamedRandomFeatures):
    """Optimal positive random features (OPRF / GERF, the estimator behind FAVOR++).

    ``phi(x) = (1 - 4A)^{d/4} exp(A |w|^2 + sqrt(1 - 4A) w.x' - |x'|^2 / 2) / sqrt(m)``
    with ``x' = sqrt(gamma) x`` is unbiased for ``exp(gamma x.y)`` for every
    ``A < 1/4`` (Likhosherstov et al., 2022); ``A = 0`` is
    :class:`PositiveRandomFeatures`.  ``fit`` chooses the ``A*`` that minimizes the
    variance for a typical pair of training points (the homogeneity heuristic:
    ``|x + y|^2`` replaced by its mean over all pairs of rows of ``X``).  For
    ``kernel="rbf"``, ``x' = sqrt(2 gamma) x`` and the exponent carries ``-|x'|^2``.

    Parameters
    ----------
    n_components : int, default=256
        Output width = number of projections.
    kernel : {"softmax", "rbf"}, default="softmax"
        See :class:`PositiveRandomFeatures`.
    gamma : float, default=1.0
        Kernel scale, > 0.
    A : float or None, default=None
        The GERF parameter; ``None`` fits ``A*`` on ``X``.  Must be < 1/8 (the
        variance is infinite from 1/8 on).  A fixed, mistuned ``A`` can raise the
        variance by orders of magnitude (:ref:`theory-favor-plus-plus`).
    projection : str, default="orthogonal"
        One of ``"orthogonal"``, ``"gaussian"``, ``"simplex"``, ``"structured"``, or the
        scrambled quasi-Monte Carlo ``"sobol"`` and ``"halton"``.
        See :func:`favorkern.draw_projection`.
    norms : {"chi", "fixed"}, default="chi"
        See :func:`favorkern.draw_projection`.
    random_state : int, RandomState instance or None, default=None
        Seed of the projection.

    Attributes
    ----------
    A_ : float
        The GERF parameter used by ``transform``.
    projection_ : ndarray of shape (n_components, n_features_in_)
        The random projection (float64), before gamma scaling.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    References
    ----------
    V. Likhosherstov et al., "Chefs' Random Tables: Non-Trigonometric Random Features",
    NeurIPS 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import OptimalPositiveRandomFeatures
    >>> X = np.random.default_rng(0).normal(scale=0.5, size=(20, 16))
    >>> oprf = OptimalPositiveRandomFeatures(64, random_state=0).fit(X)
    >>> round(oprf.A_, 3)
    -0.191
    >>> oprf.transform(X).shape
    (20, 64)
    """

    _map_name = "optimal"
    _parameter_constraints: dict = {
        **_NamedRandomFeatures._parameter_constraints,
        "A": [Interval(Real, None, 0.125, closed="neither"), None],
    }

    def __init__(
        self,
        n_components=256,
        *,
        kernel="softmax",
        gamma=1.0,
        A=None,
        projection="orthogonal",
        norms="chi",
        random_state=None,
    ):
        super().__init__(
            n_components,
            kernel=kernel,
            gamma=gamma,
            projection=projection,
            norms=norms,
            random_state=random_state,
        )
        self.A = A

    def _fit_constants(self, fmap, X, scale):
        if self.A is not None:
            return {"A": float(self.A)}
        # The estimator is of SM(x', y') in the scaled inputs x' (for rbf times per-point
        # factors that A cannot change), so A* is fitted on |x' + y'|^2.
        return fmap.fit(X, input_scale=scale)

    @property
    def A_(self):
        check_is_fitted(self)
        return self.constants_["A"]

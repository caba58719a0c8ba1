"""Nyström features: ``phi(x) = K_mm^{-1/2} k(landmarks, x)``, landmarks chosen on data.

Where random features draw their directions without looking at the data, the
Nyström method spends its ``m`` columns on ``m`` landmark points: ``phi(x).phi(y)`` is
``k(x, L) K_mm^+ k(L, y)``, the kernel projected on the span of the landmarks'
kernel functions (Williams & Seeger 2001).  When the kernel matrix's spectrum decays,
that beats random features at equal width (Yang et al. 2012), and landmarks sampled
by their ridge leverage scores make it near-optimal (Musco & Musco 2017).  See the
theory page of the documentation (:doc:`/theory`).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
from scipy import linalg, sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.extmath import safe_sparse_dot
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _config

__all__ = ["NystroemFeatures", "nystroem_kernel", "recursive_leverage_sample", "NYSTROEM_KERNELS"]

#: Kernels of :class:`NystroemFeatures`: ``"rbf"`` ``exp(-gamma |x - y|^2)``,
#: ``"softmax"`` ``exp(gamma x.y)``, ``"relu"`` the arc-cosine kernel of order 1 of
#: ``x' = sqrt(gamma) x`` (the kernel of the ``"relu"`` random-feature map).
NYSTROEM_KERNELS = ("rbf", "softmax", "relu")
LANDMARKS = ("uniform", "kmeans", "leverage")



def nystroem_kernel(X, Y, *, kernel="rbf", gamma=1.0):
    """The kernel matrix ``k(X, Y)`` of :class:`NystroemFeatures` (dense or CSR inputs).

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (n_samples_X, n_features)
    Y : {ndarray, sparse matrix} of shape (n_samples_Y, n_features)
    kernel : {"rbf", "softmax", "relu"}, default="rbf"
        ``"rbf"``: ``exp(-gamma |x - y|^2)``; ``"softmax"``: ``exp(gamma x.y)``;
        ``"relu"``: ``|x'||y'| (sin t + (pi - t) cos t) / (2 pi)``, ``x' = sqrt(gamma) x``
        and ``t`` the angle between ``x`` and ``y`` (Cho & Saul 2009): ``E[relu(w.x')
        relu(w.y')]`` for ``w ~ N(0, I)``.
    gamma : float, default=1.0

    Returns
    -------
    K : ndarray of shape (n_samples_X, n_samples_Y)
        In the dtype of ``X`` and ``Y`` (float32 when both are).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.nystroem import nystroem_kernel
    >>> x = np.array([[1.0, 0.0]])
    >>> nystroem_kernel(x, x, kernel="relu", gamma=2.0)
    array([[1.]])
    """
    if kernel == "rbf":
        if sparse.issparse(X) or sparse.issparse(Y):
            from sklearn.metrics.pairwise import rbf_kernel

            return rbf_kernel(X, Y, gamma=gamma)
        from .kernels import exact_kernel

        return exact_kernel(X, Y, kernel="rbf", gamma=gamma)
    inner = safe_sparse_dot(X, Y.T, dense_output=True)
    inner = np.asarray(inner)
    if kernel == "softmax":
        with np.errstate(over="ignore"):
            return np.exp(inner * inner.dtype.type(gamma))
    if kernel == "relu":
        norms_x = np.sqrt(_row_squares(X)).astype(inner.dtype)
        norms_y = np.sqrt(_row_squares(Y)).astype(inner.dtype)
        scale = np.multiply.outer(norms_x, norms_y)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.clip(np.where(scale > 0, inner / scale, 1.0), -1.0, 1.0)
        angle = np.arccos(cos)
        value = scale * (np.sin(angle) + (np.pi - angle) * cos) * (gamma / (2.0 * np.pi))
        return value.astype(inner.dtype, copy=False)
    raise ValueError(f"kernel must be one of {list(NYSTROEM_KERNELS)}, got {kernel!r}")


def _row_squares(X):
    if sparse.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1), dtype=np.float64).ravel()
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)


def _kernel_diagonal(X, kernel, gamma):
    """``k(x, x)`` of every row, float64."""
    if kernel == "rbf":
        return np.ones(X.shape[0])
    squares = _row_squares(X)
    if kernel == "softmax":
        with np.errstate(over="ignore"):
            return np.exp(gamma * squares)
    return 0.5 * gamma * squares  # relu: E[relu(g)^2] |x'|^2


def recursive_leverage_sample(X, n_landmarks, *, kernel="rbf", gamma=1.0, random_state=None):
    """Rows of ``X`` sampled by recursive ridge leverage scores (Musco & Musco 2017).

    The recursion (RecursiveRLS-Nyström, Algorithm 3 of the paper) halves a uniform
    sample of the rows until it is about ``n_landmarks`` long, then climbs back:
    on each level the ridge leverage scores of the level's rows,
    ``l_i = (k(x_i, x_i) - k_i^T (K_SS + lambda W^{-2})^{-1} k_i) / lambda``, are
    estimated from the weighted landmarks ``S`` (weights ``W``) sampled one level
    below, and rows are kept with probability ``min(1, l_i log s)``; ``lambda`` is
    the tail of the spectrum of ``W K_SS W`` beyond its ``k = s / (4 log s)`` largest
    eigenvalues, divided by ``k``.  The top level samples exactly ``n_landmarks``
    rows without replacement, with probabilities proportional to their scores.
    Every level forms an ``n_l x s`` kernel block and one Cholesky factor of
    ``s x s``: ``O(n s^2)`` in all.

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (n_samples, n_features)
    n_landmarks : int
        Number of rows to return, ``<= n_samples``.
    kernel : {"rbf", "softmax", "relu"}, default="rbf"
    gamma : float, default=1.0
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    indices : ndarray of shape (n_landmarks,)
        Distinct row indices of ``X``.

    References
    ----------
    C. Musco and C. Musco, "Recursive Sampling for the Nyström Method", NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.nystroem import recursive_leverage_sample
    >>> X = np.random.default_rng(0).normal(size=(1000, 3))
    >>> idx = recursive_leverage_sample(X, 20, gamma=0.5, random_state=0)
    >>> idx.shape, len(set(idx.tolist()))
    ((20,), 20)
    """
    rng = check_random_state(random_state)
    n = X.shape[0]
    s = int(n_landmarks)
    if not 1 <= s <= n:
        raise ValueError(f"n_landmarks must be in [1, {n}] (the number of rows), got {s}")
    if s == n:
        return rng.permutation(n)
    oversample = max(math.log(s), 1.0)
    k = max(1, math.ceil(s / (4.0 * oversample)))
    sizes = [n]
    while sizes[-1] > s:
        sizes.append(math.ceil(sizes[-1] / 2))
    order = rng.permutation(n)
    diagonal = _kernel_diagonal(X[order], kernel, gamma)
    if not np.all(np.isfinite(diagonal)):
        raise ValueError(
            f"the {kernel} kernel k(x, x) overflows float64 for some rows of X at "
            f"gamma={gamma}: scale X down or lower gamma"
        )
    sample = np.arange(sizes[-1])  # positions in `order` of the weighted landmarks S
    weights = np.ones(sample.size)
    for level in range(len(sizes) - 2, -1, -1):
        rows = X[order[: sizes[level]]]
        K_level = nystroem_kernel(rows, rows[sample], kernel=kernel, gamma=gamma)
        K_level = np.asarray(K_level, dtype=np.float64)
        K_SS = K_level[sample]
        weighted = K_SS * np.multiply.outer(weights, weights)
        trace = float(np.trace(weighted))
        if k >= sample.size:
            lam = 1e-6 * trace / max(sample.size, 1)
        else:
            top = linalg.eigvalsh(weighted, subset_by_index=[sample.size - k, sample.size - 1])
            lam = (trace - float(np.sum(np.abs(top)))) / k
        # A lambda of 0 (duplicate rows, a zero kernel) would make the system singular.
        lam = max(lam, 1e-10 * trace / max(sample.size, 1), np.finfo(np.float64).tiny)
        system = K_SS + np.diag(lam / weights**2)
        try:
            factor = linalg.cholesky(system, lower=True)
            solved = linalg.solve_triangular(factor, K_level.T, lower=True)
            explained = np.einsum("ij,ij->j", solved, solved)
        except linalg.LinAlgError:  # rounding: fall back to a symmetric solve
            explained = np.einsum("ij,ji->i", K_level, linalg.solve(system, K_level.T))
        scores = np.maximum(diagonal[: sizes[level]] - explained, 0.0) / lam
        if level > 0:
            keep = np.minimum(1.0, oversample * scores)
            sample = np.flatnonzero(rng.random_sample(sizes[level]) < keep)
            if sample.size == 0:  # improbable: a uniform sample instead
                keep = np.full(sizes[level], min(1.0, s / sizes[level]))
                sample = np.sort(rng.choice(sizes[level], min(s, sizes[level]), replace=False))
            weights = 1.0 / np.sqrt(keep[sample])
        else:
            scores = np.minimum(1.0, scores)
            # Every row keeps a small chance, so that exactly s distinct rows exist to draw.
            probability = np.maximum(scores, 1e-12 * max(float(scores.max()), 1e-300))
            probability /= probability.sum()
            sample = rng.choice(n, s, replace=False, p=probability)
    return order[sample]


class NystroemFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Nyström features ``phi(x) = K_mm^{-1/2} k(landmarks, x)`` with data-chosen landmarks.

    ``phi(x).phi(y) = k(x, L) K_mm^+ k(L, y)`` approximates the kernel by its
    projection on the kernel functions of ``m`` landmark points ``L``
    (Williams & Seeger 2001).  Unlike random features, the approximation is exact on
    the landmarks and adapts to the data: where the kernel matrix's spectrum decays
    it is more accurate at equal width (Yang et al. 2012), and landmarks sampled by
    ridge leverage scores make it near-optimal (Musco & Musco 2017).  As ``features=``
    of :class:`~favorkern.RandomFeatureRidge` it is fitted on the first block of rows
    and then frozen, so the fit still streams.

    Parameters
    ----------
    n_components : int, default=256
        Number of landmarks ``m`` = output width.  With fewer rows than that, every
        row is a landmark (and a warning says so).
    kernel : {"rbf", "softmax", "relu"}, default="rbf"
        ``"rbf"``: ``exp(-gamma |x - y|^2)``; ``"softmax"``: ``exp(gamma x.y)``;
        ``"relu"``: the arc-cosine kernel of order 1 of ``x' = sqrt(gamma) x``, the
        kernel of :class:`~favorkern.GeneralizedRandomFeatures` ``(function="relu")``
        (see :func:`nystroem_kernel`).
    gamma : float, default=1.0
        Kernel scale, > 0.
    landmarks : {"uniform", "kmeans", "leverage"} or array-like, default="leverage"
        ``"uniform"``: ``m`` distinct rows drawn uniformly, as
        :class:`sklearn.kernel_approximation.Nystroem` draws them (the same
        ``random_state`` gives the same rows and the same features);
        ``"kmeans"``: the ``m`` centres of k-means (one initialization, k-means++);
        ``"leverage"``: ``m`` rows sampled by recursive ridge leverage scores
        (:func:`recursive_leverage_sample`).  ``"kmeans"`` and ``"leverage"`` look at
        a uniform subsample of at most ``max(8192, 32 m)`` rows, so that ``fit`` costs
        ``O(m^2)`` per such row at most.  An array of shape ``(n_landmarks,
        n_features)`` gives the landmarks themselves; the width is then its number of
        rows and ``n_components`` is not read.
    random_state : int, RandomState instance or None, default=None
        Seed of the landmark choice.

    Attributes
    ----------
    landmarks_ : ndarray of shape (n_components_, n_features_in_)
        The landmark points ``L`` (dense, in the dtype of the training data).
    landmark_indices_ : ndarray of shape (n_components_,) or None
        Rows of the training data that are the landmarks (``None`` for k-means
        centres and given landmarks).
    normalization_ : ndarray of shape (n_components_, n_components_)
        ``K_mm^{-1/2}`` (symmetric, float64), the pseudo-inverse square root below
        the eigenvalue floor.
    eigenvalues_ : ndarray of shape (n_components_,)
        Eigenvalues of ``K_mm``, ascending.
    n_components_ : int
        Output width.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.kernel_approximation.Nystroem : Uniform landmarks only.
    TrigonometricRandomFeatures : Random Fourier features, data-free.

    Notes
    -----
    **Eigenvalue floor.**  With ``K_mm = V diag(s) V^T``, eigenvalues
    ``s_i <= m eps s_max`` (``eps`` the float64 machine epsilon) are treated as 0:
    ``K_mm^{-1/2} = V diag(s_i^{-1/2} [s_i > m eps s_max]) V^T``, the pseudo-inverse
    square root.  Those directions are rounding noise of near-duplicate landmarks;
    inverting them would multiply that noise by up to ``(m eps)^{-1/2}``.
    scikit-learn's ``Nystroem`` instead raises eigenvalues below ``1e-12`` to
    ``1e-12``; both give the same features (to rounding) wherever ``K_mm``'s
    condition number is below about ``1 / (m eps)``.

    ``fit`` computes ``K_mm`` in float64; ``transform`` computes ``k(X, L)`` in the
    input's dtype (float32 stays float32).  The ``"softmax"`` kernel overflows where
    ``gamma x.l`` exceeds the log of the dtype's largest value; ``transform`` then
    raises a ``ValueError``.

    References
    ----------
    C. Williams and M. Seeger, "Using the Nyström Method to Speed Up Kernel
    Machines", NIPS 2001.
    T. Yang et al., "Nyström Method vs Random Fourier Features: A Theoretical and
    Empirical Comparison", NIPS 2012.
    C. Musco and C. Musco, "Recursive Sampling for the Nyström Method", NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics.pairwise import rbf_kernel
    >>> from favorkern import NystroemFeatures
    >>> X = np.random.default_rng(0).normal(size=(500, 3))
    >>> nys = NystroemFeatures(100, gamma=0.2, landmarks="kmeans", random_state=0).fit(X)
    >>> Z = nys.transform(X)
    >>> Z.shape
    (500, 100)
    >>> bool(np.abs(Z @ Z.T - rbf_kernel(X, gamma=0.2)).max() < 0.05)
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "kernel": [StrOptions(set(NYSTROEM_KERNELS))],
        "gamma": [Interval(Real, 0.0, None, closed="neither")],
        "landmarks": [StrOptions(set(LANDMARKS)), "array-like"],
        "random_state": ["random_state"],
    }

    def __init__(
        self, n_components=256, *, kernel="rbf", gamma=1.0, landmarks="leverage", random_state=None
    ):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.landmarks = landmarks
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Choose the landmarks on ``X`` and factor their kernel matrix.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        rng = check_random_state(self.random_state)
        indices = None
        if isinstance(self.landmarks, str):
            n = X.shape[0]
            m = int(self.n_components)
            if m > n:
                warnings.warn(
                    f"n_components={m} is more than the {n} rows of X: every row is a "
                    f"landmark and the width is {n}",
                    stacklevel=2,
                )
                m = n
            if self.landmarks == "uniform" or m == n:
                # scikit-learn's Nystroem draws its rows so: the same seed, the same rows.
                indices = rng.permutation(n)[:m]
            else:
                candidates = np.arange(n)
                limit = max(
                    _config.NYSTROEM_MIN_CANDIDATES,
                    _config.NYSTROEM_CANDIDATES_PER_LANDMARK * m,
                )
                if n > limit:
                    candidates = np.sort(rng.choice(n, limit, replace=False))
                pool = X[candidates]
                if self.landmarks == "leverage":
                    indices = candidates[
                        recursive_leverage_sample(
                            pool, m, kernel=self.kernel, gamma=self.gamma, random_state=rng
                        )
                    ]
                else:
                    landmarks = _kmeans_centres(pool, m, rng)
            if indices is not None:
                landmarks = X[indices]
                landmarks = landmarks.toarray() if sparse.issparse(landmarks) else landmarks
        else:
            landmarks = check_array(self.landmarks, dtype=[np.float64, np.float32])
            if landmarks.shape[1] != X.shape[1]:
                raise ValueError(
                    f"landmarks must have the {X.shape[1]} columns of X, "
                    f"got shape {landmarks.shape}"
                )
        self.landmarks_ = np.ascontiguousarray(landmarks, dtype=X.dtype)
        self.landmark_indices_ = indices
        K = nystroem_kernel(
            self.landmarks_.astype(np.float64),
            self.landmarks_.astype(np.float64),
            kernel=self.kernel,
            gamma=self.gamma,
        )
        if not np.all(np.isfinite(K)):
            raise ValueError(
                f"the {self.kernel} kernel of the landmarks overflows float64 at "
                f"gamma={self.gamma}: scale X down or lower gamma"
            )
        self.eigenvalues_, self.normalization_ = _inverse_sqrt(K)
        self.n_components_ = self.landmarks_.shape[0]
        self._n_features_out = self.n_components_
        return self

    def transform(self, X):
        """Map ``X`` to Nyström features ``K_mm^{-1/2} k(landmarks, x)``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input; float32 stays float32, other numeric input becomes float64.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components_)
            ``X_new @ Y_new.T`` approximates the kernel matrix.
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        landmarks = self.landmarks_.astype(X.dtype, copy=False)
        K = nystroem_kernel(X, landmarks, kernel=self.kernel, gamma=self.gamma)
        if self.kernel == "softmax" and not np.all(np.isfinite(K)):
            raise ValueError(
                f"the softmax kernel exp(gamma x.l) overflows {X.dtype} for some rows of X "
                f"at gamma={self.gamma}: scale X down, lower gamma, or pass float64"
            )
        return K @ self.normalization_.astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _kmeans_centres(X, n_clusters, rng):
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: on a busy machine k-means' spinning threads ran 100x slower.
    with warnings.catch_warnings(), threadpool_limits(1, user_api="openmp"):
        # Fewer distinct rows than clusters: duplicate centres, which the floor handles.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=n_clusters, n_init=1, random_state=rng).fit(X)
    return model.cluster_centers_


def _inverse_sqrt(K):
    """Eigenvalues of ``K`` and its pseudo-inverse square root under the floor ``m eps s_max``."""
    K = 0.5 * (K + K.T)
    values, vectors = linalg.eigh(K)
    floor = K.shape[0] * np.finfo(np.float64).eps * max(float(values[-1]), 0.0)
    keep = values > floor
    inverse_root = np.zeros_like(values)
    inverse_root[keep] = 1.0 / np.sqrt(values[keep])
    return values, (vectors * inverse_root) @ vectors.T

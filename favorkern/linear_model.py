"""Streaming ridge regression and classification on random features, at any number of rows.

Ridge regression on features ``Z = phi(X)`` (n x m) needs only the m x m scatter
matrix and the m x t cross products of the centred features and targets; they are
accumulated over row blocks, so the n x m feature matrix is never held
(:class:`RidgeStatistics`).  One eigendecomposition of the scatter matrix
(:class:`RidgeSolver`) then gives the coefficients for every penalty of a grid, the
exact leave-one-out errors (with a second pass over the rows, as
:class:`sklearn.linear_model.RidgeCV` computes them) or the generalized
cross-validation errors (from the statistics alone), and the predictive variance
of the Bayesian model in feature space (the random-feature Gaussian process).

The estimators are :class:`RandomFeatureRidge` and
:class:`RandomFeatureRidgeClassifier`; :func:`favorkern.dask.fit` runs the same
pieces on dask workers.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = [
    "RandomFeatureRidge",
    "RandomFeatureRidgeClassifier",
    "RidgeStatistics",
    "RidgeSolver",
    "encode_labels",
    "default_batch_size",
]

# Float64 feature bytes per row block.  A block of 32 MiB (4096 rows at m = 2048) keeps
# the scatter product at the GEMM rate (measured: 1024 rows already run dsyrk within 5%
# of a large GEMM at m = 2048) while the block, its centred copy and the m x m
# accumulators stay far below a gigabyte.
BLOCK_BYTES = 32 << 20
# Assumed width when the feature transformer does not say (no ``n_components``).
_DEFAULT_WIDTH = 256


def default_batch_size(n_components):
    """Rows per block for ``n_components`` features: :data:`BLOCK_BYTES` of float64 features.

    Parameters
    ----------
    n_components : int
        Width of the feature map.

    Returns
    -------
    batch_size : int
        ``max(64, BLOCK_BYTES // (8 * n_components))``.

    Examples
    --------
    >>> from favorkern.linear_model import default_batch_size
    >>> default_batch_size(2048)
    2048
    """
    if isinstance(n_components, bool) or not isinstance(n_components, Integral):
        raise TypeError(f"n_components must be an integer, got {n_components!r}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    return max(64, BLOCK_BYTES // (8 * int(n_components)))


def _as_targets(Y, n_rows=None):
    """Targets as a float64 (n, t) array (a 1-D target becomes one column), finite and
    with ``n_rows`` rows when given, else a ``ValueError`` naming ``Y``."""
    try:
        Y = np.asarray(Y, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Y must be numeric targets, got {type(Y).__name__}") from None
    Y = Y[:, np.newaxis] if Y.ndim == 1 else Y
    if Y.ndim != 2:
        raise ValueError(f"Y must be 1-D or 2-D (n,) or (n, t), got shape {Y.shape}")
    if n_rows is not None and Y.shape[0] != n_rows:
        raise ValueError(f"Y must have {n_rows} rows like X, got shape {Y.shape}")
    if Y.size:
        low, high = float(Y.min()), float(Y.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("the targets y contain NaN or infinity")
        if max(high, -low) > _MAX_TARGET:
            raise ValueError(
                f"the targets y reach {max(high, -low):.3g}: sums of their squares would "
                "overflow float64; divide y by a power of ten (the coefficients scale with it)"
            )
    return Y


# Targets beyond this have squares whose sums over rows can overflow float64.
_MAX_TARGET = 1e150


def _check_alphas(alphas):
    """The penalty grid as a 1-D float64 array of finite values > 0."""
    values = np.atleast_1d(np.asarray(alphas, dtype=object))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D sequence of numbers > 0, got {alphas!r}")
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, Real)
            or not (np.isfinite(value) and value > 0)
        ):
            raise ValueError(f"alphas must hold finite numbers > 0, got {value!r} in {alphas!r}")
    return values.astype(np.float64)


def _check_sample_weight(sample_weight, n_samples):
    """``None`` or a float64 (n,) array of finite, non-negative weights."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Real) and not isinstance(sample_weight, bool):
        weights = np.full(n_samples, float(sample_weight))
    else:
        try:
            weights = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sample_weight must be numeric: {exc}") from exc
    if weights.ndim != 1 or weights.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight must be a number or a 1-D array of length {n_samples} "
            f"(one weight per row of X), got shape {weights.shape}"
        )
    if not np.isfinite(weights).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (weights < 0).any():
        raise ValueError("sample_weight must be non-negative")
    return weights


def _row_blocks(n_rows, batch_size):
    for start in range(0, n_rows, batch_size):
        yield start, min(n_rows, start + batch_size)


def _feature_block(features, X_block):
    """Features of one row block as a float64 array the caller may overwrite."""
    Z = features.transform(X_block)
    if sp.issparse(Z):
        Z = Z.toarray()
    return np.asarray(Z, dtype=np.float64)


class RidgeStatistics:
    """Sufficient statistics of ridge regression: centred scatter of features and targets.

    For rows ``z_i`` (features), targets ``y_i`` and weights ``w_i`` (1 when not
    given), with ``W = sum_i w_i`` and the weighted means ``mu = sum_i w_i z_i / W``
    and ``ybar = sum_i w_i y_i / W``:

    * ``feature_scatter = sum_i w_i (z_i - mu)(z_i - mu)^T``  (m x m),
    * ``cross_scatter = sum_i w_i (z_i - mu)(y_i - ybar)^T``  (m x t),
    * ``target_scatter = sum_i w_i (y_i - ybar)^2``  (t,).

    Each block is centred on its own mean before its scatter is formed (a BLAS
    ``syrk`` through ``numpy.dot``), and blocks combine with the pairwise update
    of Chan, Golub and LeVeque: for parts ``a`` and ``b`` with
    ``delta = mu_b - mu_a``, ``S = S_a + S_b + (W_a W_b / W) delta delta^T``.  So
    the centring is exact (no ``sum z z^T - W mu mu^T`` cancellation) and the
    result does not depend on how the rows were split, up to rounding.

    Parameters
    ----------
    n_samples : int
        Number of rows (with any weight, zero included).
    weight_sum : float
        ``W``.
    feature_mean : ndarray of shape (m,)
    target_mean : ndarray of shape (t,)
    feature_scatter : ndarray of shape (m, m)
    cross_scatter : ndarray of shape (m, t)
    target_scatter : ndarray of shape (t,)

    See Also
    --------
    RidgeSolver : The solve from these statistics.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.linear_model import RidgeStatistics
    >>> rng = np.random.default_rng(0)
    >>> Z, y = rng.normal(size=(100, 3)), rng.normal(size=100)
    >>> whole = RidgeStatistics.from_block(Z, y)
    >>> parts = RidgeStatistics.from_block(Z[:30], y[:30]).merge(
    ...     RidgeStatistics.from_block(Z[30:], y[30:]))
    >>> bool(np.allclose(whole.feature_scatter, parts.feature_scatter))
    True
    >>> bool(np.allclose(whole.feature_scatter, 99 * np.cov(Z.T)))
    True
    """

    def __init__(
        self,
        n_samples,
        weight_sum,
        feature_mean,
        target_mean,
        feature_scatter,
        cross_scatter,
        target_scatter,
    ):
        self.n_samples = int(n_samples)
        self.weight_sum = float(weight_sum)
        self.feature_mean = np.asarray(feature_mean, dtype=np.float64)
        self.target_mean = np.asarray(target_mean, dtype=np.float64)
        self.feature_scatter = np.asarray(feature_scatter, dtype=np.float64)
        self.cross_scatter = np.asarray(cross_scatter, dtype=np.float64)
        self.target_scatter = np.asarray(target_scatter, dtype=np.float64)
        self._solvers = {}

    @property
    def n_components(self):
        """Width ``m`` of the features."""
        return self.feature_mean.shape[0]

    @property
    def n_targets(self):
        """Number ``t`` of target columns."""
        return self.target_mean.shape[0]

    @classmethod
    def empty(cls, n_components, n_targets):
        """Statistics of no rows (the identity of :meth:`merge`)."""
        m, t = int(n_components), int(n_targets)
        return cls(
            0, 0.0, np.zeros(m), np.zeros(t), np.zeros((m, m)), np.zeros((m, t)), np.zeros(t)
        )

    @classmethod
    def from_block(cls, Z, Y, sample_weight=None, *, overwrite=False):
        """Statistics of one block of features ``Z`` (n x m) and targets ``Y`` (n or n x t).

        Parameters
        ----------
        Z : ndarray of shape (n, m)
            Features; accumulated in float64 whatever their dtype.
        Y : ndarray of shape (n,) or (n, t)
        sample_weight : ndarray of shape (n,), default=None
        overwrite : bool, default=False
            Allow ``Z`` (when it is float64) to be overwritten by its centred copy,
            which saves one block of memory.

        Returns
        -------
        statistics : RidgeStatistics
        """
        Z = np.asarray(Z)
        if Z.ndim != 2:
            raise ValueError(f"Z must be a 2-D array of features, got shape {Z.shape}")
        Y = _as_targets(Y)
        if Y.shape[0] != Z.shape[0]:
            raise ValueError(f"Y must have {Z.shape[0]} rows like Z, got shape {Y.shape}")
        weights = _check_sample_weight(sample_weight, Z.shape[0])
        n, m = Z.shape
        if n == 0:
            return cls.empty(m, Y.shape[1])
        if Z.dtype == np.float64 and overwrite:
            Zc = Z
        else:
            Zc = np.array(Z, dtype=np.float64, order="C")
        if weights is None:
            weight_sum = float(n)
            feature_mean = Zc.mean(axis=0)
            target_mean = Y.mean(axis=0)
        else:
            weight_sum = float(weights.sum())
            if weight_sum == 0:
                return cls(
                    n,
                    0.0,
                    np.zeros(m),
                    np.zeros(Y.shape[1]),
                    np.zeros((m, m)),
                    np.zeros((m, Y.shape[1])),
                    np.zeros(Y.shape[1]),
                )
            feature_mean = (weights @ Zc) / weight_sum
            target_mean = (weights @ Y) / weight_sum
        Zc -= feature_mean
        Yc = Y - target_mean
        if weights is not None:
            root = np.sqrt(weights)[:, np.newaxis]
            Zc *= root
            Yc *= root
        # numpy.dot recognizes Zc.T @ Zc and calls syrk (half the flops of a GEMM).
        scatter = np.dot(Zc.T, Zc)
        return cls(
            n,
            weight_sum,
            feature_mean,
            target_mean,
            scatter,
            Zc.T @ Yc,
            np.einsum("ij,ij->j", Yc, Yc),
        )

    @classmethod
    def from_features(cls, features, X, Y, sample_weight=None, *, batch_size=None):
        """Statistics of ``features.transform(X)`` and ``Y``, one row block at a time.

        Never holds more than one block of features (``batch_size`` rows, default
        :func:`default_batch_size` of the features' width).

        Parameters
        ----------
        features : fitted transformer
        X : array-like or sparse matrix of shape (n, d)
            Anything that slices by rows: ndarray, memmap, CSR matrix.
        Y : ndarray of shape (n,) or (n, t)
        sample_weight : ndarray of shape (n,), default=None
        batch_size : int, default=None

        Returns
        -------
        statistics : RidgeStatistics
        """
        n = X.shape[0]
        Y = _as_targets(Y, n)
        weights = _check_sample_weight(sample_weight, n)
        if batch_size is None:
            batch_size = default_batch_size(_width(features))
        sums = None
        for start, stop in _row_blocks(n, batch_size):
            Z = _feature_block(features, X[start:stop])
            w = None if weights is None else weights[start:stop]
            if sums is None:
                sums = _ShiftedSums(Z, Y[start:stop], w)
            sums.add(Z, Y[start:stop], w)
            del Z
        if sums is None:
            return cls.empty(_width(features), Y.shape[1])
        return sums.statistics()

    def _merge_into(self, other):
        """Add ``other`` into ``self`` in place (no new m x m array); returns ``self``."""
        if other.n_components != self.n_components or other.n_targets != self.n_targets:
            raise ValueError(
                "cannot merge statistics of different shapes: "
                f"(m={self.n_components}, t={self.n_targets}) and "
                f"(m={other.n_components}, t={other.n_targets})"
            )
        total = self.weight_sum + other.weight_sum
        self.n_samples += other.n_samples
        self._solvers = {}
        if other.weight_sum == 0:
            return self
        if self.weight_sum == 0:
            self.weight_sum = other.weight_sum
            self.feature_mean = other.feature_mean.copy()
            self.target_mean = other.target_mean.copy()
            self.feature_scatter += other.feature_scatter
            self.cross_scatter += other.cross_scatter
            self.target_scatter += other.target_scatter
            return self
        delta_z = other.feature_mean - self.feature_mean
        delta_y = other.target_mean - self.target_mean
        factor = self.weight_sum * other.weight_sum / total
        self.feature_scatter += other.feature_scatter
        # rank-one update in place: S += factor * delta delta^T
        self.feature_scatter += factor * np.multiply.outer(delta_z, delta_z)
        self.cross_scatter += other.cross_scatter + factor * np.multiply.outer(delta_z, delta_y)
        self.target_scatter += other.target_scatter + factor * delta_y**2
        self.feature_mean = self.feature_mean + delta_z * (other.weight_sum / total)
        self.target_mean = self.target_mean + delta_y * (other.weight_sum / total)
        self.weight_sum = total
        return self

    def merge(self, other):
        """The statistics of the rows of ``self`` and of ``other`` together (a new object).

        Parameters
        ----------
        other : RidgeStatistics

        Returns
        -------
        statistics : RidgeStatistics
        """
        if not isinstance(other, RidgeStatistics):
            raise TypeError(f"other must be RidgeStatistics, got {type(other).__name__}")
        return self.copy()._merge_into(other)

    def copy(self):
        """A deep copy."""
        return RidgeStatistics(
            self.n_samples,
            self.weight_sum,
            self.feature_mean.copy(),
            self.target_mean.copy(),
            self.feature_scatter.copy(),
            self.cross_scatter.copy(),
            self.target_scatter.copy(),
        )

    def solver(self, *, fit_intercept=True):
        """The :class:`RidgeSolver` of these statistics (computed once, then cached)."""
        key = bool(fit_intercept)
        if key not in self._solvers:
            self._solvers = {key: RidgeSolver(self, fit_intercept=key)}
        return self._solvers[key]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_solvers"] = {}
        return state

    def __repr__(self):
        return (
            f"RidgeStatistics(n_samples={self.n_samples}, n_components={self.n_components}, "
            f"n_targets={self.n_targets})"
        )


class _ShiftedSums:
    """Running sums of one stream around a fixed shift: no m x m work per block but syrk.

    Rows are accumulated as ``z - c`` with ``c`` the mean of the first block (the
    "shifted data" algorithm: with ``c`` close to the mean, ``S_c - s s^T / W`` has
    no harmful cancellation), into a Fortran-ordered accumulator updated in place by
    BLAS ``dsyrk`` (upper triangle); :meth:`statistics` centres and symmetrizes once.
    Separate streams (calls, dask chunks) combine by the exact pairwise update.
    """

    def __init__(self, Z, Y, weights):
        m, t = Z.shape[1], Y.shape[1]
        if weights is None or weights.sum() == 0:
            self.feature_shift = np.mean(Z, axis=0, dtype=np.float64)
            self.target_shift = Y.mean(axis=0)
        else:
            self.feature_shift = (weights @ Z) / weights.sum()
            self.target_shift = (weights @ Y) / weights.sum()
        self.n_samples = 0
        self.weight_sum = 0.0
        self.feature_sum = np.zeros(m)
        self.target_sum = np.zeros(t)
        self.scatter = np.zeros((m, m), order="F")
        self.cross = np.zeros((m, t))
        self.target_squares = np.zeros(t)

    def add(self, Z, Y, weights):
        from scipy.linalg.blas import dsyrk

        Zc = Z if Z.dtype == np.float64 and Z.flags.c_contiguous else np.array(Z, np.float64)
        Zc -= self.feature_shift
        Yc = Y - self.target_shift
        self.n_samples += Z.shape[0]
        if weights is None:
            self.weight_sum += Z.shape[0]
            self.feature_sum += Zc.sum(axis=0)
            self.target_sum += Yc.sum(axis=0)
        else:
            self.weight_sum += float(weights.sum())
            self.feature_sum += weights @ Zc
            self.target_sum += weights @ Yc
            root = np.sqrt(weights)[:, np.newaxis]
            Zc *= root
            Yc *= root
        # Zc.T is F-contiguous: dsyrk computes Zc^T Zc into the accumulator in place.
        dsyrk(1.0, Zc.T, beta=1.0, c=self.scatter, overwrite_c=True)
        self.cross += Zc.T @ Yc
        self.target_squares += np.einsum("ij,ij->j", Yc, Yc)

    def statistics(self):
        W = self.weight_sum
        m, t = self.cross.shape
        if W == 0:
            return RidgeStatistics(
                self.n_samples,
                0.0,
                np.zeros(m),
                np.zeros(t),
                np.zeros((m, m)),
                np.zeros((m, t)),
                np.zeros(t),
            )
        feature_offset, target_offset = self.feature_sum / W, self.target_sum / W
        scatter = np.triu(self.scatter)
        scatter += np.triu(self.scatter, 1).T
        scatter -= W * np.multiply.outer(feature_offset, feature_offset)
        return RidgeStatistics(
            self.n_samples,
            W,
            self.feature_shift + feature_offset,
            self.target_shift + target_offset,
            np.ascontiguousarray(scatter),
            self.cross - W * np.multiply.outer(feature_offset, target_offset),
            self.target_squares - W * target_offset**2,
        )


def _width(features):
    """Output width of a feature transformer (or of the last step of a pipeline) if it says."""
    params = features.get_params(deep=True) if hasattr(features, "get_params") else {}
    names = [key for key in params if key == "n_components" or key.endswith("__n_components")]
    for name in names[::-1] if "n_components" not in params else ["n_components"]:
        width = params[name]
        if isinstance(width, Integral) and not isinstance(width, bool) and width > 0:
            return int(width)
    return _DEFAULT_WIDTH


class RidgeSolver:
    """Ridge solutions from the statistics: one eigendecomposition serves a whole penalty grid.

    With ``S = V diag(s) V^T`` the (centred, when ``fit_intercept``) weighted
    scatter of the features and ``q = V^T b`` the projected cross products
    ``b = sum_i w_i (z_i - mu)(y_i - ybar)``:

    * coefficients ``coef(alpha) = V diag(1 / (s + alpha)) q``, intercept
      ``ybar - mu . coef``;
    * the weighted residual sum of squares
      ``RSS(alpha) = yy - sum_k q_k^2 (s_k + 2 alpha) / (s_k + alpha)^2``;
    * generalized cross-validation (Golub, Heath and Wahba, 1979),
      ``GCV(alpha) = (RSS / W) / (1 - df / W)^2`` with the effective degrees of
      freedom ``df = sum_k s_k / (s_k + alpha) + fit_intercept`` (weights count as
      frequencies; ``inf`` where ``df >= W``);
    * the exact leave-one-out errors, which need every row's leverage
      ``h_i = w_i (z_i - mu)^T (S + alpha I)^{-1} (z_i - mu) + w_i / W`` and
      residual ``r_i``: ``e_i = sqrt(w_i) r_i / (1 - h_i)`` (the identity behind
      :class:`~sklearn.linear_model.RidgeCV`), computed block by block in a second
      pass over the rows by :meth:`loo_errors` as ``U = (Z - mu) V`` then
      ``h = (U * U) @ (1 / (s + alpha))`` for the whole grid at once;
    * the posterior of the Bayesian model (see :class:`RandomFeatureRidge`).

    A single penalty needs no eigendecomposition: :meth:`coef`,
    :meth:`noise_variance` and :meth:`posterior_factor` then use a Cholesky
    factorization of ``S + alpha I`` (``m^3 / 3`` flops against about ``9 m^3``);
    the eigendecomposition is computed on first use of a grid (:meth:`gcv_errors`,
    :meth:`loo_errors`, the eigen attributes) and then serves every penalty.

    Parameters
    ----------
    statistics : RidgeStatistics
    fit_intercept : bool, default=True
        Without an intercept the uncentred scatter ``S + W mu mu^T`` is used.

    Attributes
    ----------
    eigenvalues : ndarray of shape (m,)
        ``s``, clipped at zero (computed on first access).
    eigenvectors : ndarray of shape (m, m)
        ``V``.
    projected_cross : ndarray of shape (m, t)
        ``q``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from favorkern.linear_model import RidgeStatistics
    >>> rng = np.random.default_rng(0)
    >>> Z, y = rng.normal(size=(50, 4)), rng.normal(size=50)
    >>> solver = RidgeStatistics.from_block(Z, y).solver()
    >>> coef = solver.coef(2.0)[:, 0]
    >>> bool(np.allclose(coef, Ridge(alpha=2.0).fit(Z, y).coef_))
    True
    """

    def __init__(self, statistics, *, fit_intercept=True):
        self.statistics = statistics
        self.fit_intercept = bool(fit_intercept)
        stats = statistics
        self.scatter = stats.feature_scatter
        self.cross = stats.cross_scatter
        self.target_sum_squares = stats.target_scatter.copy()
        if not self.fit_intercept:
            W, mu, ybar = stats.weight_sum, stats.feature_mean, stats.target_mean
            self.scatter = self.scatter + W * np.multiply.outer(mu, mu)
            self.cross = self.cross + W * np.multiply.outer(mu, ybar)
            self.target_sum_squares = self.target_sum_squares + W * ybar**2
        self._eigen = None
        self._cholesky = {}

    def _eigensystem(self):
        if self._eigen is None:
            # symmetric by construction up to rounding; eigh reads one triangle
            eigenvalues, eigenvectors = np.linalg.eigh(self.scatter)
            eigenvalues = np.maximum(eigenvalues, 0.0)
            self._eigen = (eigenvalues, eigenvectors, eigenvectors.T @ self.cross)
        return self._eigen

    @property
    def eigenvalues(self):
        return self._eigensystem()[0]

    @property
    def eigenvectors(self):
        return self._eigensystem()[1]

    @property
    def projected_cross(self):
        return self._eigensystem()[2]

    def _cholesky_factor(self, alpha):
        """Lower Cholesky factor of ``S + alpha I``, or None if it fails (then eigh)."""
        if self._eigen is not None:
            return None
        if alpha not in self._cholesky:
            from scipy.linalg import LinAlgError, cholesky

            shifted = self.scatter.copy()
            shifted.flat[:: shifted.shape[0] + 1] += alpha
            try:
                self._cholesky = {alpha: cholesky(shifted, lower=True, overwrite_a=True)}
            except LinAlgError:
                return None
        return self._cholesky[alpha]

    @property
    def feature_offset(self):
        """The mean subtracted from the features: ``mu``, or zeros without intercept."""
        mean = self.statistics.feature_mean
        return mean if self.fit_intercept else np.zeros_like(mean)

    def coef(self, alpha):
        """Coefficients ``(m, t)`` at penalty ``alpha``."""
        factor = self._cholesky_factor(alpha)
        if factor is not None:
            from scipy.linalg import cho_solve

            return cho_solve((factor, True), self.cross)
        return self.eigenvectors @ (self.projected_cross / (self.eigenvalues + alpha)[:, None])

    def intercept(self, coef):
        """Intercepts ``(t,)`` of coefficients ``coef`` (zeros without intercept)."""
        if not self.fit_intercept:
            return np.zeros(self.statistics.n_targets)
        return self.statistics.target_mean - self.statistics.feature_mean @ coef

    def residual_sum_squares(self, alpha):
        """Weighted residual sum of squares ``(t,)`` of the fit at ``alpha``."""
        s, q = self.eigenvalues[:, None], self.projected_cross
        rss = self.target_sum_squares - np.sum(q**2 * (s + 2 * alpha) / (s + alpha) ** 2, axis=0)
        return np.maximum(rss, 0.0)

    def noise_variance(self, alpha):
        """Estimate ``(t,)`` of the noise variance ``sigma^2`` of the Bayesian model.

        ``(yy - b^T coef) / (W - fit_intercept)`` = ``(RSS + alpha |coef|^2) /
        (W - fit_intercept)``: the maximum of the marginal likelihood of
        ``y ~ N(0, sigma^2 (I + Z Z^T / alpha))`` over ``sigma^2`` (restricted to the
        complement of the intercept when there is one).  Divided by ``W`` when
        ``W <= 1``.
        """
        fit = np.einsum("ij,ij->j", self.cross, self.coef(alpha))  # b^T coef
        W = self.statistics.weight_sum
        dof = W - self.fit_intercept if W > 1 else max(W, np.finfo(np.float64).tiny)
        return np.maximum(self.target_sum_squares - fit, 0.0) / dof

    def gcv_errors(self, alphas):
        """Generalized cross-validation errors ``(t, n_alphas)`` (see the class notes)."""
        alphas = _check_alphas(alphas)
        W = self.statistics.weight_sum
        errors = np.empty((self.statistics.n_targets, alphas.size))
        for j, alpha in enumerate(alphas):
            df = np.sum(self.eigenvalues / (self.eigenvalues + alpha)) + self.fit_intercept
            if W <= df:
                errors[:, j] = np.inf
            else:
                errors[:, j] = (self.residual_sum_squares(alpha) / W) / (1 - df / W) ** 2
        return errors

    def loo_block_errors(self, Z, Y, sample_weight=None, *, alphas):
        """Summed squared leave-one-out errors ``(t, n_alphas)`` of the rows of one block.

        ``Z`` (n x m) are the features of rows that are part of the statistics;
        summed over every block of the fit and divided by the number of rows this
        is the mean squared leave-one-out error of
        :class:`~sklearn.linear_model.RidgeCV`.
        """
        alphas = _check_alphas(alphas)
        Y = _as_targets(Y)
        weights = _check_sample_weight(sample_weight, Y.shape[0])
        Zc = np.array(Z, dtype=np.float64, order="C")
        if Zc.shape[0] == 0:
            return np.zeros((Y.shape[1], alphas.size))
        Zc -= self.feature_offset
        U = Zc @ self.eigenvectors
        del Zc
        inverse = 1.0 / (self.eigenvalues[:, None] + alphas[None, :])  # (m, n_alphas)
        leverage = (U * U) @ inverse  # (n, n_alphas)
        m, t = self.projected_cross.shape
        # fitted centred values for every target and alpha: (n, t, n_alphas)
        weighted = (self.projected_cross[:, :, None] * inverse[:, None, :]).reshape(m, -1)
        fitted = (U @ weighted).reshape(-1, t, alphas.size)
        del U
        offset = self.statistics.target_mean if self.fit_intercept else 0.0
        residual = (Y - offset)[:, :, None] - fitted
        W = self.statistics.weight_sum
        if weights is None:
            denominator = 1.0 - leverage - (1.0 / W if self.fit_intercept else 0.0)
            squared = residual**2 / denominator[:, None, :] ** 2
        else:
            denominator = 1.0 - weights[:, None] * leverage
            if self.fit_intercept:
                denominator -= weights[:, None] / W
            squared = weights[:, None, None] * residual**2 / denominator[:, None, :] ** 2
        return squared.sum(axis=0)

    def loo_errors(self, features, X, Y, sample_weight=None, *, alphas, batch_size=None):
        """:meth:`loo_block_errors` summed over the row blocks of ``features.transform(X)``.

        Parameters
        ----------
        features : fitted transformer
            The one the statistics were accumulated with.
        X : array-like or sparse matrix of shape (n, d)
        Y : ndarray of shape (n,) or (n, t)
        sample_weight : ndarray of shape (n,), default=None
        alphas : array-like of float
        batch_size : int, default=None

        Returns
        -------
        errors : ndarray of shape (t, n_alphas)
            Sums of squared leave-one-out errors over the rows of ``X``.
        """
        alphas = _check_alphas(alphas)
        Y = _as_targets(Y, X.shape[0])
        weights = _check_sample_weight(sample_weight, X.shape[0])
        if batch_size is None:
            batch_size = default_batch_size(self.statistics.n_components)
        total = np.zeros((Y.shape[1], alphas.size))
        for start, stop in _row_blocks(X.shape[0], batch_size):
            Z = _feature_block(features, X[start:stop])
            w = None if weights is None else weights[start:stop]
            total += self.loo_block_errors(Z, Y[start:stop], w, alphas=alphas)
        return total

    def posterior_factor(self, alpha):
        """``F`` (m x m) with ``F F^T = (S + alpha I)^{-1}``.

        ``V diag((s + alpha)^{-1/2})`` from the eigendecomposition, else ``C^{-T}``
        for the Cholesky factor ``C C^T = S + alpha I``.
        """
        factor = self._cholesky_factor(alpha)
        if factor is not None:
            from scipy.linalg import solve_triangular

            identity = np.eye(factor.shape[0])
            return solve_triangular(factor, identity, lower=True).T
        return self.eigenvectors / np.sqrt(self.eigenvalues + alpha)


class _BaseRandomFeatureRidge(BaseEstimator):
    """Streaming fit shared by the regressor and the classifier."""

    _parameter_constraints: dict = {
        "features": [HasMethods(["fit", "transform"]), None],
        "alphas": ["array-like", Interval(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, features=None, *, alphas=(1.0,), fit_intercept=True, batch_size=None):
        self.features = features
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.batch_size = batch_size

    # -- pieces shared with favorkern.dask ---------------------------------------
    def _feature_template(self):
        if self.features is None:
            from .features import TrigonometricRandomFeatures

            return TrigonometricRandomFeatures(kernel="rbf", random_state=0)
        return self.features

    def resolved_batch_size(self):
        """Rows per block: ``batch_size``, or :func:`default_batch_size` of the width."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return default_batch_size(_width(self._feature_template()))

    def init_features(self, X, y=None, *, classes=None):
        """Validate the first block of rows and fit a clone of ``features`` on it.

        The entry point of fits that accumulate statistics elsewhere
        (:func:`favorkern.dask.fit`): sets ``n_features_in_`` (and
        ``feature_names_in_`` when ``X`` has column names), the output dtype (that
        of ``X``), the shape of the targets (from ``y``) and, for the classifier,
        ``classes_``; returns the fitted transformer without storing it (the next
        :meth:`fit_statistics` stores it as ``features_``).  Data-free maps only
        use the number of columns; data-dependent ones (such as
        :class:`~favorkern.OptimalPositiveRandomFeatures` or Nystroem) are fitted
        on these rows only, as ``fit`` fits them on its first block.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            The first rows (``fit`` uses its first ``batch_size`` rows).
        y : array-like of shape (n_rows,) or (n_rows, n_targets), default=None
            Their targets (regressor: only the number of dimensions is used).
        classes : array-like, default=None
            Classifier only, required: every label of the data.

        Returns
        -------
        features : fitted transformer
        """
        self._validate_params()
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=True)
        self._dtype = X.dtype
        self._init_targets(y, classes)
        return self._fit_features(X)

    def _fit_features(self, X_first):
        template = self._feature_template()
        if not (hasattr(template, "fit") and hasattr(template, "transform")):
            raise TypeError(
                f"features must be a transformer with fit and transform, got {template!r}"
            )
        return clone(template).fit(X_first)

    def fit_statistics(self, features, statistics, *, loo_errors=None):
        """Set the model from accumulated statistics: choose ``alpha_``, solve.

        Parameters
        ----------
        features : fitted transformer
            The map the statistics were accumulated with; stored as ``features_``.
        statistics : RidgeStatistics
            Stored as ``statistics_``.
        loo_errors : ndarray of shape (t, n_alphas), default=None
            Summed squared leave-one-out errors over all rows
            (:meth:`RidgeSolver.loo_errors`).  ``None`` with several ``alphas``:
            generalized cross-validation from the statistics alone.

        Returns
        -------
        self : object
        """
        self._validate_params()
        if not isinstance(statistics, RidgeStatistics):
            raise TypeError(f"statistics must be RidgeStatistics, got {type(statistics).__name__}")
        if statistics.n_samples == 0:
            raise ValueError("statistics hold no rows: fit at least one sample")
        if statistics.weight_sum <= 0:
            raise ValueError("sample_weight sums to zero: at least one positive weight is needed")
        alphas = _check_alphas(self.alphas)
        solver = statistics.solver(fit_intercept=self.fit_intercept)
        if alphas.size == 1:
            best, cv_values, criterion = 0, None, None
        else:
            if loo_errors is not None:
                loo_errors = np.asarray(loo_errors, dtype=np.float64)
                if loo_errors.shape != (statistics.n_targets, alphas.size):
                    raise ValueError(
                        f"loo_errors must have shape {(statistics.n_targets, alphas.size)}, "
                        f"got {loo_errors.shape}"
                    )
                cv_values, criterion = loo_errors / statistics.n_samples, "loo"
            else:
                cv_values, criterion = solver.gcv_errors(alphas), "gcv"
            # first alpha of the lowest mean error over targets, as RidgeCV breaks ties
            best = int(np.argmin(cv_values.mean(axis=0)))
        alpha = float(alphas[best])
        coef = solver.coef(alpha)
        self.features_ = features
        if hasattr(features, "n_features_in_"):
            self.n_features_in_ = features.n_features_in_
        self.statistics_ = statistics
        self.alpha_ = alpha
        self.cv_criterion_ = criterion
        if cv_values is None:
            self.cv_values_ = None
            self.best_score_ = None
        else:
            self.cv_values_ = cv_values[0] if self._single_target(statistics) else cv_values
            self.best_score_ = -float(cv_values[:, best].mean())
        self._set_solution(solver, coef, alpha)
        # the solver's m x m eigenbasis is not needed after the solve: free it
        statistics._solvers = {}
        return self

    def _single_target(self, statistics):
        return False

    def _set_solution(self, solver, coef, alpha):
        raise NotImplementedError

    def _stream(self, X, Y, sample_weight, first):
        """Features (fitted on the first block when ``first``) and the statistics of X, Y."""
        batch_size = self.resolved_batch_size()
        features = self._fit_features(X[:batch_size]) if first else self.features_
        statistics = RidgeStatistics.from_features(
            features, X, Y, sample_weight, batch_size=batch_size
        )
        return features, statistics

    def _fit_encoded(self, X, Y, sample_weight):
        """Two passes when the grid has several alphas (exact LOO), else one."""
        features, statistics = self._stream(X, Y, sample_weight, first=True)
        loo = None
        alphas = _check_alphas(self.alphas)
        if alphas.size > 1 and statistics.weight_sum > 0:
            solver = statistics.solver(fit_intercept=self.fit_intercept)
            loo = solver.loo_errors(
                features,
                X,
                Y,
                sample_weight,
                alphas=alphas,
                batch_size=self.resolved_batch_size(),
            )
        return self.fit_statistics(features, statistics, loo_errors=loo)

    def _partial_fit_encoded(self, X, Y, sample_weight, first):
        features, statistics = self._stream(X, Y, sample_weight, first=first)
        if not first:
            statistics = self.statistics_.merge(statistics)
        return self.fit_statistics(features, statistics)

    def _decision_blocks(self, X, return_std=False):
        """Linear predictions ``(n, t)`` over row blocks, and their predictive std."""
        n = X.shape[0]
        t = self._coef.shape[1]
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        out = np.empty((n, t), dtype=dtype)
        std = np.empty((n, t), dtype=dtype) if return_std else None
        coef = self._coef.astype(dtype)
        intercept = self._intercept.astype(dtype)
        for start, stop in _row_blocks(n, self.resolved_batch_size()):
            Z = self.features_.transform(X[start:stop])
            if sp.issparse(Z):
                Z = Z.toarray()
            out[start:stop] = Z @ coef + intercept
            if return_std:
                centred = np.asarray(Z, dtype=np.float64) - self._feature_offset
                projected = centred @ self._posterior_factor
                leverage = np.einsum("ij,ij->i", projected, projected)
                scale = 1.0 + self._intercept_variance + leverage
                std[start:stop] = np.sqrt(np.multiply.outer(scale, self._noise))
        return out, std

    def __sklearn_is_fitted__(self):
        # solved, not merely validated (a failed first partial_fit leaves n_features_in_)
        return hasattr(self, "_coef")

    def _store_common(self, solver, coef, alpha):
        """Float64 solution and posterior pieces used by the blockwise predictions."""
        self._coef = coef
        self._intercept = solver.intercept(coef)
        self._feature_offset = solver.feature_offset
        self._posterior_factor = solver.posterior_factor(alpha)
        self._noise = solver.noise_variance(alpha)
        W = solver.statistics.weight_sum
        self._intercept_variance = 1.0 / W if self.fit_intercept else 0.0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_MODEL_NOTES = """
    Notes
    -----
    **Streaming.**  ``fit`` maps ``batch_size`` rows at a time to features and
    accumulates the centred scatter matrix of the features, their cross products
    with the targets and the running sums needed for the intercept
    (:class:`RidgeStatistics`, float64 whatever the feature dtype); the n x m
    feature matrix is never formed.  The default ``batch_size``,
    :func:`default_batch_size`, holds 32 MiB of float64 features (4096 rows at
    m = 2048), so the working memory is about two blocks plus a few m x m
    matrices whatever the number of rows.  The feature map is fitted on the first
    block: data-free maps (all of favorkern's but
    :class:`~favorkern.OptimalPositiveRandomFeatures`) use only the number of
    columns; data-dependent maps see only those rows.

    **Penalty selection.**  One eigendecomposition ``S = V diag(s) V^T`` of the
    centred scatter gives the solution for every ``alpha`` of the grid.  With
    several values ``fit`` makes a second pass over the rows for the exact
    leave-one-out errors ``e_i = r_i / (1 - h_i)`` of every alpha at once, the
    criterion of :class:`~sklearn.linear_model.RidgeCV` (its ``gcv_mode``
    ``"eigen"`` path for n > m), so ``alpha_`` equals RidgeCV's choice on the same
    features.  ``partial_fit`` (and :func:`favorkern.dask.fit` only when it is
    given the statistics alone) cannot revisit the rows and uses generalized
    cross-validation, ``GCV = (RSS / W) / (1 - df / W)^2``, which replaces every
    leverage ``h_i`` by their mean ``df / W`` (see :class:`RidgeSolver`);
    ``cv_criterion_`` says which was used.  ``cv_values_`` is the mean over rows of
    RidgeCV's per-row ``cv_results_`` (``RidgeCV(store_cv_results=True)``, called
    ``cv_values_`` before scikit-learn 1.5): keeping every row's errors would cost
    O(n) memory.  ``best_score_`` is, as in RidgeCV, minus the smallest mean
    squared error.

    **Predictive variance.**  The Bayesian model behind ridge regression is
    ``y = w . phi(x) + c + eps`` with ``eps ~ N(0, sigma^2)``, the prior
    ``w ~ N(0, sigma^2 / alpha I)`` and a flat prior on the intercept ``c``; its
    posterior mean is the ridge solution and, with ``S`` the centred weighted
    scatter, ``mu`` the feature mean and ``W`` the weight sum, the predictive
    variance of a new target is

    ``var(y*) = sigma^2 (1 + (phi(x*) - mu)^T (S + alpha I)^{-1} (phi(x*) - mu) + 1 / W)``

    (without an intercept: ``sigma^2 (1 + phi^T (G + alpha I)^{-1} phi)`` with the
    uncentred ``G``).  For a map with ``phi(x).phi(x) ~ k(x, x)`` this is the
    Gaussian process with kernel ``sigma^2 / alpha k`` and noise ``sigma^2``.
    ``sigma^2`` is estimated as ``(RSS + alpha |w|^2) / (W - 1)``, the maximizer of
    the marginal likelihood (restricted for the intercept), and stored as
    ``noise_variance_``.  Sample weights act as frequency weights.
"""


class RandomFeatureRidge(RegressorMixin, _BaseRandomFeatureRidge):
    __doc__ = (
        """Ridge regression on random features, streamed over row blocks: kernel ridge at any n.

    Fits ``y ~ phi(x) . w + c`` by ridge regression where ``phi`` is a random-feature
    map (default :class:`~favorkern.TrigonometricRandomFeatures` with the rbf
    kernel), without holding the n x m feature matrix: memory is independent of
    the number of rows.  Equal, to rounding, to
    ``make_pipeline(features, Ridge(alpha))`` (and, for a grid, to ``RidgeCV``) on
    the materialized features.

    Parameters
    ----------
    features : transformer, default=None
        A feature map with ``fit`` and ``transform`` (any favorkern random-feature
        transformer, or scikit-learn's ``RBFSampler``, ``Nystroem``...).  Cloned and
        fitted in ``fit`` (``features_``), so grid searches over
        ``features__gamma`` or ``features__n_components`` work.  ``None``:
        ``TrigonometricRandomFeatures(kernel="rbf", random_state=0)`` (seeded so
        that fits are reproducible).
    alphas : array-like of float, default=(1.0,)
        Penalties, > 0.  With several, ``alpha_`` is chosen by leave-one-out
        cross-validation (see Notes).
    fit_intercept : bool, default=True
        Fit an intercept (the features and targets are centred exactly).
    batch_size : int, default=None
        Rows per block in ``fit``, ``partial_fit`` and ``predict``; ``None``:
        :func:`default_batch_size` of the feature width (32 MiB of float64
        features).

    Attributes
    ----------
    features_ : transformer
        The fitted feature map.
    coef_ : ndarray of shape (n_components,) or (n_targets, n_components)
    intercept_ : float or ndarray of shape (n_targets,)
    alpha_ : float
        The penalty used.
    cv_values_ : ndarray of shape (n_alphas,) or (n_targets, n_alphas), or None
        Mean squared cross-validation error of every alpha (``None`` with a single
        alpha: nothing to choose, so no second pass).
    best_score_ : float or None
        Minus the mean squared error at ``alpha_``.
    cv_criterion_ : {"loo", "gcv"} or None
        How ``cv_values_`` were computed.
    noise_variance_ : float or ndarray of shape (n_targets,)
        Estimated noise variance ``sigma^2`` of the Bayesian model.
    statistics_ : RidgeStatistics
        The accumulated statistics (``partial_fit`` adds to them).
    n_features_in_ : int
        Number of input columns.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Input column names, when ``X`` had string column names.

    See Also
    --------
    RandomFeatureRidgeClassifier : The classifier.
    favorkern.dask.fit : The same fit on dask arrays, chunk statistics on the workers.
    sklearn.linear_model.RidgeCV : The same model on materialized features.
"""
        + _MODEL_NOTES
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import make_friedman1
    >>> from favorkern import RandomFeatureRidge, TrigonometricRandomFeatures
    >>> X, y = make_friedman1(n_samples=5000, noise=1.0, random_state=0)
    >>> features = TrigonometricRandomFeatures(512, kernel="rbf", gamma=0.1, random_state=0)
    >>> model = RandomFeatureRidge(features, alphas=np.logspace(-3, 1, 5)).fit(X, y)
    >>> model.alpha_, bool(model.score(X, y) > 0.9)
    (0.001, True)
    >>> mean, std = model.predict(X[:3], return_std=True)
    >>> std.shape
    (3,)
    """
    )

    def fit(self, X, y, sample_weight=None):
        """Fit on all rows, streamed in blocks (two passes when ``alphas`` has several values).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Rows are read ``batch_size`` at a time (a memmap is never loaded whole).
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : float or array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        self._validate_params()
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse="csr",
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
        )
        weights = _check_sample_weight(sample_weight, X.shape[0])
        self._y_ndim = np.ndim(y)
        self._dtype = X.dtype
        return self._fit_encoded(X, y, weights)

    def partial_fit(self, X, y, sample_weight=None):
        """Add a block of rows to the statistics and re-solve.

        The first call fits the feature map on (the first ``batch_size`` rows of)
        its ``X``; later calls must have the same columns.  Fitting all rows at
        once and calling ``partial_fit`` over any split of them give the same
        statistics and (with one alpha) the same model, to rounding; with several
        alphas ``partial_fit`` selects ``alpha_`` by generalized cross-validation.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : float or array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        self._validate_params()
        first = not hasattr(self, "statistics_")
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse="csr",
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=True,
            reset=first,
        )
        if first:
            self._y_ndim = np.ndim(y)
        elif _as_targets(y).shape[1] != self.statistics_.n_targets:
            raise ValueError(
                f"y has {_as_targets(y).shape[1]} target columns, but the model was fitted "
                f"with {self.statistics_.n_targets}"
            )
        weights = _check_sample_weight(sample_weight, X.shape[0])
        self._dtype = X.dtype
        return self._partial_fit_encoded(X, y, weights, first)

    def _single_target(self, statistics):
        return getattr(self, "_y_ndim", 1) == 1

    def _init_targets(self, y, classes):
        if classes is not None:
            raise ValueError("classes applies to RandomFeatureRidgeClassifier only")
        self._y_ndim = 1 if y is None else np.ndim(y)

    def _set_solution(self, solver, coef, alpha):
        dtype = getattr(self, "_dtype", np.float64)
        self._store_common(solver, coef, alpha)
        single = self._single_target(solver.statistics)
        # as Ridge: one target column gives 1-D coef_ (and predictions), 1-D y a float intercept
        self.coef_ = (coef[:, 0] if coef.shape[1] == 1 else coef.T).astype(dtype)
        self.intercept_ = float(self._intercept[0]) if single else self._intercept.astype(dtype)
        self.noise_variance_ = float(self._noise[0]) if single else self._noise.copy()

    def predict(self, X, return_std=False):
        """Predict in row blocks; optionally the predictive standard deviation.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        return_std : bool, default=False
            Also return the standard deviation of the predictive distribution of
            a new target (see Notes): noise included.  Costs an extra
            ``n_components^2`` multiply-adds per row.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_targets)
        y_std : ndarray of the same shape, only when ``return_std``
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        if not isinstance(return_std, (bool, np.bool_)):
            raise TypeError(f"return_std must be a bool, got {return_std!r}")
        out, std = self._decision_blocks(X, return_std=bool(return_std))
        if out.shape[1] == 1:
            out = out[:, 0]
            std = None if std is None else std[:, 0]
        return (out, std) if return_std else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def encode_labels(y, classes):
    """One-vs-rest targets of :class:`~sklearn.linear_model.RidgeClassifier`: +1 / -1.

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels, each one of ``classes``.
    classes : array-like of shape (n_classes,)
        Sorted distinct labels (at least two).

    Returns
    -------
    Y : ndarray of shape (n, 1) for two classes (+1 for ``classes[1]``), else (n, n_classes)

    Examples
    --------
    >>> from favorkern.linear_model import encode_labels
    >>> encode_labels(["b", "a", "c"], ["a", "b", "c"])
    array([[-1.,  1., -1.],
           [ 1., -1., -1.],
           [-1., -1.,  1.]])
    """
    y = np.asarray(y)
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size < 2:
        raise ValueError(f"classes must list at least two labels, got {classes!r}")
    index = np.searchsorted(classes, y)
    index = np.clip(index, 0, classes.size - 1)
    unknown = classes[index] != y
    if np.any(unknown):
        raise ValueError(
            f"y contains labels not in classes {classes.tolist()}: "
            f"{np.unique(y[unknown]).tolist()[:5]}"
        )
    if classes.size == 2:
        return np.where(index == 1, 1.0, -1.0)[:, np.newaxis]
    Y = np.full((y.shape[0], classes.size), -1.0)
    Y[np.arange(y.shape[0]), index] = 1.0
    return Y


class RandomFeatureRidgeClassifier(ClassifierMixin, _BaseRandomFeatureRidge):
    __doc__ = """Ridge classification on random features, streamed over row blocks.

    One-vs-rest ridge regression on +1 / -1 targets, as
    :class:`~sklearn.linear_model.RidgeClassifier`, on a random-feature map, with
    the streaming fit, penalty selection and memory bound of
    :class:`RandomFeatureRidge`.

    Parameters
    ----------
    features : transformer, default=None
        See :class:`RandomFeatureRidge`.
    alphas : array-like of float, default=(1.0,)
        Penalties; with several, chosen by leave-one-out squared error on the
        encoded targets (as :class:`~sklearn.linear_model.RidgeClassifierCV`).
    fit_intercept : bool, default=True
    batch_size : int, default=None

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    features_ : transformer
    coef_ : ndarray of shape (1, n_components) or (n_classes, n_components)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    alpha_ : float
    cv_values_ : ndarray of shape (n_targets, n_alphas) or None
        ``n_targets`` is 1 for two classes, else ``n_classes``.
    best_score_ : float or None
    cv_criterion_ : {"loo", "gcv"} or None
    statistics_ : RidgeStatistics
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)

    See Also
    --------
    RandomFeatureRidge : The regressor (and the Notes on the method).
    sklearn.linear_model.RidgeClassifierCV : The same model on materialized features.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from favorkern import RandomFeatureRidgeClassifier, TrigonometricRandomFeatures
    >>> X, y = make_moons(n_samples=2000, noise=0.1, random_state=0)
    >>> features = TrigonometricRandomFeatures(256, kernel="rbf", gamma=2.0, random_state=0)
    >>> model = RandomFeatureRidgeClassifier(features, alphas=[0.01, 0.1, 1.0]).fit(X, y)
    >>> round(model.score(X, y), 2)
    1.0
    """

    def fit(self, X, y, sample_weight=None):
        """Fit on all rows, streamed in blocks.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two distinct).
        sample_weight : float or array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        self._validate_params()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(
                f"y has one class ({classes[0]}); a classifier needs at least two classes"
            )
        weights = _check_sample_weight(sample_weight, X.shape[0])
        self.classes_ = classes
        self._dtype = X.dtype
        return self._fit_encoded(X, encode_labels(y, classes), weights)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Add a block of rows to the statistics and re-solve.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            Every label of the whole stream; required on the first call, and if
            given later it must not change.
        sample_weight : float or array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
        """
        self._validate_params()
        first = not hasattr(self, "statistics_")
        X, y = validate_data(
            self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32], reset=first
        )
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError(
                    "classes must be given on the first call to partial_fit "
                    "(every label of the stream, e.g. classes=np.unique(y_all))"
                )
            classes = np.unique(np.asarray(classes))
            if classes.size < 2:
                raise ValueError(f"classes must list at least two labels, got {classes!r}")
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={np.unique(classes).tolist()} differs from the classes of the first "
                f"call, {self.classes_.tolist()}"
            )
        else:
            classes = self.classes_
        weights = _check_sample_weight(sample_weight, X.shape[0])
        targets = encode_labels(y, classes)  # raises on labels outside classes
        # only once every check has passed: a failed first call leaves no fitted state
        self.classes_ = classes
        self._dtype = X.dtype
        return self._partial_fit_encoded(X, targets, weights, first)

    def _init_targets(self, y, classes):
        if classes is None:
            raise ValueError("classes must be given: every label of the data")
        classes = np.unique(np.asarray(classes))
        check_classification_targets(classes)
        if classes.size < 2:
            raise ValueError(f"classes must list at least two labels, got {classes!r}")
        self.classes_ = classes

    def _set_solution(self, solver, coef, alpha):
        dtype = getattr(self, "_dtype", np.float64)
        self._store_common(solver, coef, alpha)
        self.coef_ = coef.T.astype(dtype)
        self.intercept_ = self._intercept.astype(dtype)
        self.noise_variance_ = self._noise.copy()

    def decision_function(self, X):
        """Signed scores: one column per class (one for two classes, > 0 for ``classes_[1]``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        scores, _ = self._decision_blocks(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

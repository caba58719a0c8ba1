"""Sufficient statistics of ridge regression on streamed features, and the checks of its
inputs (penalties, targets, sample weights, row blocks).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp

from .. import _config

# Assumed width when the feature transformer does not say (no ``n_components``).
DEFAULT_WIDTH = 256


def default_batch_size(n_components):
    """Rows per block for ``n_components`` features: 32 MiB of float64 features.

    Parameters
    ----------
    n_components : int
        Width of the feature map.

    Returns
    -------
    batch_size : int
        ``max(64, RIDGE_BLOCK_BYTES // (8 * n_components))``, the block size being
        ``favorkern._config.RIDGE_BLOCK_BYTES``.

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
    return max(64, _config.RIDGE_BLOCK_BYTES // (8 * int(n_components)))


def as_targets(Y, n_rows=None):
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
        if max(high, -low) > MAX_TARGET:
            raise ValueError(
                f"the targets y reach {max(high, -low):.3g}: sums of their squares would "
                "overflow float64; divide y by a power of ten (the coefficients scale with it)"
            )
    return Y


# Targets beyond this have squares whose sums over rows can overflow float64.
MAX_TARGET = 1e150


def check_alphas(alphas):
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


def check_sample_weight(sample_weight, n_samples):
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


def row_blocks(n_rows, batch_size):
    for start in range(0, n_rows, batch_size):
        yield start, min(n_rows, start + batch_size)


def feature_block(features, X_block):
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
        Y = as_targets(Y)
        if Y.shape[0] != Z.shape[0]:
            raise ValueError(f"Y must have {Z.shape[0]} rows like Z, got shape {Y.shape}")
        weights = check_sample_weight(sample_weight, Z.shape[0])
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
        Y = as_targets(Y, n)
        weights = check_sample_weight(sample_weight, n)
        if batch_size is None:
            batch_size = default_batch_size(feature_width(features))
        sums = None
        for start, stop in row_blocks(n, batch_size):
            Z = feature_block(features, X[start:stop])
            w = None if weights is None else weights[start:stop]
            if sums is None:
                sums = _ShiftedSums(Z, Y[start:stop], w)
            sums.add(Z, Y[start:stop], w)
            del Z
        if sums is None:
            return cls.empty(feature_width(features), Y.shape[1])
        return sums.statistics()

    def _merge_into(self, other):
        """Add ``other`` into ``self`` in place (no new m x m array); returns ``self``.

        Statistics of no rows are the identity whatever their width: an empty chunk
        cannot know the width of a transformer that never transformed a row (its
        ``n_components`` may differ from its output, as Nystroem's with few rows).
        """
        if other.n_samples == 0 and other.n_targets == self.n_targets:
            return self
        if self.n_samples == 0 and other.n_targets == self.n_targets:
            self.__dict__.update(other.copy().__dict__)
            self._solvers = {}
            return self
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
        from ._solver import RidgeSolver  # the solver is built on these statistics

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


def feature_width(features):
    """Output width of a feature transformer (or of the last step of a pipeline) if it says."""
    params = features.get_params(deep=True) if hasattr(features, "get_params") else {}
    names = [key for key in params if key == "n_components" or key.endswith("__n_components")]
    for name in names[::-1] if "n_components" not in params else ["n_components"]:
        width = params[name]
        if isinstance(width, Integral) and not isinstance(width, bool) and width > 0:
            return int(width)
    return DEFAULT_WIDTH

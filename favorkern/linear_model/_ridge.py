"""The streaming ridge estimators: :class:`RandomFeatureRidge` and
:class:`RandomFeatureRidgeClassifier`.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import int_interval
from ._statistics import (
    RidgeStatistics,
    as_targets,
    check_alphas,
    check_sample_weight,
    default_batch_size,
    feature_width,
    row_blocks,
)


class _BaseRandomFeatureRidge(BaseEstimator):
    """Streaming fit shared by the regressor and the classifier."""

    _parameter_constraints: dict = {
        "features": [HasMethods(["fit", "transform"]), None],
        "alphas": ["array-like", Interval(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "batch_size": [int_interval(1), None],
    }

    def __init__(self, features=None, *, alphas=(1.0,), fit_intercept=True, batch_size=None):
        self.features = features
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.batch_size = batch_size

    # -- pieces shared with favorkern.dask ---------------------------------------
    def _feature_template(self):
        if self.features is None:
            from ..features import TrigonometricRandomFeatures

            return TrigonometricRandomFeatures(kernel="rbf", random_state=0)
        return self.features

    def resolved_batch_size(self):
        """Rows per block: ``batch_size``, or :func:`default_batch_size` of the width."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return default_batch_size(feature_width(self._feature_template()))

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
        alphas = check_alphas(self.alphas)
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
            best = _best_alpha(cv_values, alphas, criterion, statistics.n_samples)
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
        alphas = check_alphas(self.alphas)  # before any row is transformed
        features, statistics = self._stream(X, Y, sample_weight, first=True)
        loo = None
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
        check_alphas(self.alphas)  # before any row is transformed
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
        for start, stop in row_blocks(n, self.resolved_batch_size()):
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
        weights = check_sample_weight(sample_weight, X.shape[0])
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
        elif as_targets(y).shape[1] != self.statistics_.n_targets:
            raise ValueError(
                f"y has {as_targets(y).shape[1]} target columns, but the model was fitted "
                f"with {self.statistics_.n_targets}"
            )
        weights = check_sample_weight(sample_weight, X.shape[0])
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


def _best_alpha(cv_values, alphas, criterion, n_samples) -> int:
    """Index of the penalty with the lowest finite mean score over targets.

    The first of equal scores, as :class:`~sklearn.linear_model.RidgeCV` breaks ties.
    Scores that are not finite (NaN where a penalty is so small or so large that
    the solve loses every digit; ``inf`` where generalized cross-validation is
    undefined, ``df >= W``) never win; a grid where no score is finite is refused.
    """
    mean = cv_values.mean(axis=0)
    finite = np.isfinite(mean)
    if not finite.any():
        name = "leave-one-out" if criterion == "loo" else "generalized cross-validation"
        if n_samples == 1:
            raise ValueError(
                f"1 sample cannot choose among {alphas.size} alphas by {name}: fit more rows, "
                "or pass a single alpha"
            )
        raise ValueError(
            f"no penalty in alphas has a finite {name} score (alphas from {alphas.min():.3g} "
            f"to {alphas.max():.3g}; scores {mean.tolist()[:5]}{' ...' if mean.size > 5 else ''}): "
            "the penalties are too small or too large for these features, or too few rows "
            "were seen for generalized cross-validation; choose other alphas or a single one"
        )
    return int(np.argmin(np.where(finite, mean, np.inf)))


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
        weights = check_sample_weight(sample_weight, X.shape[0])
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
        weights = check_sample_weight(sample_weight, X.shape[0])
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

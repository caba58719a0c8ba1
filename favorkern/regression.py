"""Random-feature ridge regression next to RBFSampler, Nystroem and exact KernelRidge.

The engine of ``favorkern regress``: on a data set (:mod:`favorkern.datasets`), choose
``gamma`` and ``alpha`` once by cross-validating exact kernel ridge regression on a
subsample (:func:`select_gamma_alpha`), then fit every method at every width with
that same ``gamma`` and ``alpha`` and record fit and predict time, test ``R^2`` and
the kernel-approximation error (:func:`compare_regression`).

Every random-feature model is ``StandardScaler -> features -> Ridge(alpha,
fit_intercept=False)`` on the centred target, which is exactly kernel ridge
regression with the approximate kernel ``phi(x).phi(y)``: as the width grows its
predictions converge to those of exact :class:`~sklearn.kernel_ridge.KernelRidge`
with the same ``alpha`` (also fitted on the centred target).

Data of any length: :func:`favorkern.datasets.iter_chunks` reads a CSV (or Parquet)
file, or generates ``friedman1``, in row chunks of bounded memory, and
:func:`fit_streaming` fits
:class:`~favorkern.RandomFeatureRidge` over them with ``partial_fit`` and measures
held-out ``R^2``, fit time and peak memory.

pandas is imported inside the functions that need it; the figure is
:func:`favorkern.plotting.plot_regression`.
"""

from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._parallel import blas_single_thread
from ._validation import check_int, check_option, check_positive_real
from .datasets import DEFAULT_CHUNKSIZE, iter_chunks, n_chunks
from .features import (
    KERNELS,
    HyperbolicRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
)
from .kernels import exact_kernel
from .linear_model import RandomFeatureRidge

__all__ = [
    "METHODS",
    "SKLEARN_METHODS",
    "select_gamma_alpha",
    "make_regressor",
    "compare_regression",
    "summarize_regression",
    "fit_streaming",
    "peak_rss_mb",
]

#: Methods compared by :func:`compare_regression`, in table order.
METHODS = (
    "Trigonometric (orthogonal)",
    "Trigonometric (streaming)",
    "Trigonometric distinct (orthogonal)",
    "Positive (orthogonal)",
    "Hyperbolic (orthogonal)",
    "NystroemFeatures (leverage)",
    "NystroemFeatures (kmeans)",
    "RBFSampler",
    "Nystroem",
    "KernelRidge (exact)",
)
#: The methods from scikit-learn; every other random-feature method is favorkern's.
SKLEARN_METHODS = ("RBFSampler", "Nystroem")
EXACT = "KernelRidge (exact)"
# The streaming model: the same features as "Trigonometric (orthogonal)" in
# favorkern.RandomFeatureRidge, which never holds the n x width feature matrix.
STREAMING = "Trigonometric (streaming)"

# Gamma grids are multiples of 1/d (standardized data: |x - y|^2 ~ 2d).  The softmax
# grid stops at 1/(2d): the relative variance of its estimators grows like
# exp(gamma |x + y|^2) ~ exp(2 gamma d), so larger gamma cannot be approximated.
_GAMMA_EXPONENTS = {"rbf": np.arange(-8, 3), "softmax": np.arange(-10, 0)}
# Ridge penalties, two per decade from 1e-6 (almost interpolation) to 100 (mostly the mean).
_ALPHAS = np.logspace(-6, 2, 17)


# -- kernels and models -----------------------------------------------------------
class _SoftmaxFromGaussian(TransformerMixin, BaseEstimator):
    """Softmax-kernel features from Gaussian-kernel ones: ``psi(x) = exp(gamma|x|^2/2) phi(x)``.

    ``exp(gamma x.y) = exp(gamma|x|^2/2) exp(-gamma/2 |x - y|^2) exp(gamma|y|^2/2)``, so
    a map ``phi`` for the Gaussian kernel with scale ``gamma / 2`` (RBFSampler,
    Nystroem) becomes one for the softmax kernel with scale ``gamma``.  For Nystroem
    this is exactly Nystroem with the softmax kernel on the same landmarks (the
    diagonal factors cancel in ``K_xb K_bb^-1 K_by``).
    """

    def __init__(self, features=None, gamma=1.0):
        self.features = features
        self.gamma = gamma

    def fit(self, X, y=None):
        self.features_ = clone(self.features).set_params(gamma=self.gamma / 2).fit(X)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float64)
        scale = np.exp(0.5 * self.gamma * np.einsum("ij,ij->i", X, X))
        return self.features_.transform(X) * scale[:, np.newaxis]


class _ExactKernelRidge(RegressorMixin, BaseEstimator):
    """:class:`~sklearn.kernel_ridge.KernelRidge` on a precomputed rbf or softmax kernel."""

    def __init__(self, kernel="rbf", gamma=1.0, alpha=1.0):
        self.kernel = kernel
        self.gamma = gamma
        self.alpha = alpha

    def fit(self, X, y):
        self.X_fit_ = np.asarray(X, dtype=np.float64)
        gram = exact_kernel(self.X_fit_, kernel=self.kernel, gamma=self.gamma)
        self.model_ = KernelRidge(alpha=self.alpha, kernel="precomputed").fit(gram, y)
        return self

    def predict(self, X):
        check_is_fitted(self)
        gram = exact_kernel(X, self.X_fit_, kernel=self.kernel, gamma=self.gamma)
        return self.model_.predict(gram)


def _features(method, n_components, kernel, gamma, random_state):
    """The feature map of ``method`` at width ``n_components`` (``None`` for the exact model)."""
    favorkern_maps = {
        "Trigonometric (orthogonal)": TrigonometricRandomFeatures,
        STREAMING: TrigonometricRandomFeatures,
        "Positive (orthogonal)": PositiveRandomFeatures,
        "Hyperbolic (orthogonal)": HyperbolicRandomFeatures,
    }
    if method == "Trigonometric distinct (orthogonal)":
        return TrigonometricRandomFeatures(
            n_components, kernel=kernel, gamma=gamma, projection="orthogonal",
            frequencies="distinct", random_state=random_state,
        )  # fmt: skip
    if method.startswith("NystroemFeatures"):
        from .nystroem import NystroemFeatures

        landmarks = method[method.index("(") + 1 : -1]
        return NystroemFeatures(
            n_components, kernel=kernel, gamma=gamma, landmarks=landmarks,
            random_state=random_state,
        )  # fmt: skip
    if method in favorkern_maps:
        return favorkern_maps[method](
            n_components,
            kernel=kernel,
            gamma=gamma,
            projection="orthogonal",
            random_state=random_state,
        )
    if method == "RBFSampler":
        base = RBFSampler(gamma=gamma, n_components=n_components, random_state=random_state)
    elif method == "Nystroem":
        base = Nystroem(
            kernel="rbf", gamma=gamma, n_components=n_components, random_state=random_state
        )
    else:
        return None
    return base if kernel == "rbf" else _SoftmaxFromGaussian(base, gamma=gamma)


def make_regressor(method, *, n_components=256, kernel="rbf", gamma=1.0, alpha=1.0, random_state=0):
    """The model that :func:`compare_regression` fits for ``method``.

    ``StandardScaler -> features -> Ridge(alpha, fit_intercept=False)`` (or exact
    kernel ridge regression for ``"KernelRidge (exact)"``; for
    ``"Trigonometric (streaming)"`` the features and the ridge step are one
    :class:`~favorkern.RandomFeatureRidge`, equal to the pipeline to rounding),
    fitted on the centred target: a
    :class:`~sklearn.compose.TransformedTargetRegressor` subtracts the training
    mean of ``y`` and adds it back to the predictions.  Without an intercept
    in the ridge step, the random-feature model is kernel ridge
    regression with the approximate kernel, so its predictions converge to the
    exact model's as ``n_components`` grows.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.  ``"RBFSampler"`` and ``"Nystroem"`` with
        ``kernel="softmax"`` use the identity ``exp(gamma x.y) = exp(gamma|x|^2/2)
        exp(-gamma|x-y|^2/2) exp(gamma|y|^2/2)`` on top of their Gaussian maps.
    n_components : int, default=256
        Output width of the feature map (Nystroem: number of landmarks, at most the
        number of training rows).
    kernel : {"rbf", "softmax"}, default="rbf"
    gamma : float, default=1.0
    alpha : float, default=1.0
        Ridge penalty, the same for every method.
    random_state : int, default=0
        Seed of the feature map.

    Returns
    -------
    model : sklearn.compose.TransformedTargetRegressor
        Unfitted.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from favorkern.regression import make_regressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> model = make_regressor("Trigonometric (orthogonal)", n_components=2048, gamma=0.02)
    >>> exact = make_regressor("KernelRidge (exact)", gamma=0.02)
    >>> p, q = model.fit(X, y).predict(X), exact.fit(X, y).predict(X)
    >>> bool(np.linalg.norm(p - q) < 0.05 * np.linalg.norm(q - y.mean()))
    True
    """
    check_option(method, "method", METHODS)
    check_option(kernel, "kernel", KERNELS)
    gamma = check_positive_real(gamma, "gamma")
    alpha = check_positive_real(alpha, "alpha")
    n_components = check_int(n_components, "n_components")
    features = _features(method, n_components, kernel, gamma, random_state)
    if features is None:
        regressor = make_pipeline(
            StandardScaler(), _ExactKernelRidge(kernel=kernel, gamma=gamma, alpha=alpha)
        )
    elif method == STREAMING:
        regressor = make_pipeline(
            StandardScaler(), RandomFeatureRidge(features, alphas=(alpha,), fit_intercept=False)
        )
    else:
        regressor = make_pipeline(StandardScaler(), features, Ridge(alpha, fit_intercept=False))
    return TransformedTargetRegressor(regressor, transformer=StandardScaler(with_std=False))


# -- hyperparameters --------------------------------------------------------------
def select_gamma_alpha(
    X,
    y,
    *,
    kernel="rbf",
    gammas=None,
    alphas=None,
    max_samples=1000,
    cv=3,
    random_state=0,
):
    """Choose ``gamma`` and ``alpha`` by K-fold cross-validation of exact kernel ridge.

    On a random subsample of at most ``max_samples`` rows (standardized with its
    own mean and scale), for every ``gamma`` and every fold the training kernel is
    diagonalized once, ``K = V diag(w) V^T``, so that every ``alpha`` costs only a
    matrix-vector product: ``coef = V diag(1 / (w + alpha)) V^T (y - mean)``.  The
    pair with the lowest mean squared validation error wins.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Raw features (standardized here, as in the models).
    y : array-like of shape (n_samples,)
    kernel : {"rbf", "softmax"}, default="rbf"
    gammas : array-like of float, default=None
        Candidates.  ``None``: ``2^k / d`` for ``k = -8..2`` (rbf) or ``k = -10..-1``
        (softmax, whose random features cannot follow a larger gamma: their
        relative variance grows like ``exp(2 gamma d)``).
    alphas : array-like of float, default=None
        Candidates; ``None``: 17 values log-spaced from ``1e-6`` to ``100``.
    max_samples : int, default=1000
        Size of the subsample.
    cv : int, default=3
        Number of folds.
    random_state : int, RandomState instance or None, default=0
        Seed of the subsample and of the folds.

    Returns
    -------
    gamma : float
    alpha : float

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from favorkern.regression import select_gamma_alpha
    >>> X, y = load_diabetes(return_X_y=True)
    >>> gamma, alpha = select_gamma_alpha(X, y, max_samples=300, random_state=0)
    >>> 0 < gamma < 1 and 0 < alpha <= 100
    True
    """
    check_option(kernel, "kernel", KERNELS)
    max_samples = check_int(max_samples, "max_samples", min_value=10)
    cv = check_int(cv, "cv", min_value=2)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rng = check_random_state(random_state)
    if len(y) > max_samples:
        rows = rng.choice(len(y), size=max_samples, replace=False)
        X, y = X[rows], y[rows]
    X = StandardScaler().fit_transform(X)
    if gammas is None:
        gammas = 2.0 ** _GAMMA_EXPONENTS[kernel] / X.shape[1]
    gammas = [check_positive_real(float(g), "gamma") for g in np.ravel(gammas)]
    if not gammas:
        raise ValueError("gammas must hold at least one value")
    alphas = _ALPHAS if alphas is None else np.ravel(alphas)
    alphas = np.array([check_positive_real(float(a), "alpha") for a in alphas])
    if not alphas.size:
        raise ValueError("alphas must hold at least one value")
    folds = list(KFold(cv, shuffle=True, random_state=rng).split(X))
    errors = np.zeros((len(gammas), len(alphas)))
    with blas_single_thread():  # eigh of a few hundred rows: threads only contend
        _cross_validate(X, y, kernel, gammas, alphas, folds, errors)
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    return float(gammas[i]), float(alphas[j])


def _cross_validate(X, y, kernel, gammas, alphas, folds, errors):
    """Fill ``errors[i, j]`` with the summed fold MSE of ``(gammas[i], alphas[j])``."""
    for i, gamma in enumerate(gammas):
        gram = exact_kernel(X, kernel=kernel, gamma=gamma)
        if not np.isfinite(gram).all():
            errors[i] = np.inf
            continue
        for train, test in folds:
            mean = y[train].mean()
            w, V = np.linalg.eigh(gram[np.ix_(train, train)])
            w = np.maximum(w, 0.0)
            projected = V.T @ (y[train] - mean)
            cross = gram[np.ix_(test, train)] @ V
            # one column of predictions per alpha
            predictions = mean + cross @ (projected[:, None] / (w[:, None] + alphas[None, :]))
            errors[i] += ((predictions - y[test, None]) ** 2).mean(axis=0)


# -- the comparison ---------------------------------------------------------------
def _approximation_error(model, X_eval, kernel, gamma):
    """Relative Frobenius error of ``phi(X) phi(X)^T`` against the exact kernel."""
    pipeline = model.regressor_
    scaled = pipeline[0].transform(X_eval)
    exact = exact_kernel(scaled, kernel=kernel, gamma=gamma)
    if isinstance(pipeline[1], RandomFeatureRidge):
        phi = pipeline[1].features_.transform(scaled)
    elif len(pipeline) == 2:  # the exact model
        return 0.0
    else:
        phi = pipeline[1].transform(scaled)
    return float(np.linalg.norm(phi @ phi.T - exact) / np.linalg.norm(exact))


def _fit_and_measure(method, width, repeat, random_state, split, params):
    """One row of :func:`compare_regression`: fit and predict times, test ``R^2``, kernel error."""
    X_train, y_train, X_test, y_test, X_eval = split
    if width is None:  # the exact model has no width
        width_used = 1
    elif method == "Nystroem" or method.startswith("NystroemFeatures"):
        # at most one landmark per training row
        width_used = min(width, len(y_train))
    else:
        width_used = width
    model = make_regressor(
        method, n_components=width_used, random_state=random_state + repeat, **params
    )
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    predictions = model.predict(X_test)
    predict_time = time.perf_counter() - start
    return {
        "method": method,
        "kernel": params["kernel"],
        "n_components": np.nan if width is None else width,
        "repeat": repeat,
        "fit_time": fit_time,
        "predict_time": predict_time,
        "test_r2": r2_score(y_test, predictions),
        "kernel_error": _approximation_error(model, X_eval, params["kernel"], params["gamma"]),
    }


def compare_regression(
    X,
    y,
    *,
    kernel="rbf",
    n_components=(16, 64, 256, 1024, 2048),
    methods=METHODS,
    gamma=None,
    alpha=None,
    test_size=0.25,
    max_exact=5000,
    max_error_samples=2000,
    cv_samples=1000,
    n_repeats=1,
    random_state=0,
    progress=None,
):
    """Fit every method at every width on one train/test split and measure it.

    ``gamma`` and ``alpha`` (when not given) are chosen once by
    :func:`select_gamma_alpha` on a subsample of the training rows and shared by
    all methods.  Each random-feature method is fitted ``n_repeats`` times with
    seeds ``random_state + r``; the exact model once, and only when the training
    set has at most ``max_exact`` rows (its cost is O(n^3) time, O(n^2) memory).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    kernel : {"rbf", "softmax"}, default="rbf"
    n_components : sequence of int, default=(16, 64, 256, 1024, 2048)
        Output widths.
    methods : sequence of str, default=METHODS
        A subset of :data:`METHODS`.
    gamma, alpha : float, default=None
        ``None``: chosen by cross-validation (see above).
    test_size : float, default=0.25
        Fraction of rows held out for ``R^2`` and the kernel error.
    max_exact : int, default=5000
        Largest training set on which exact kernel ridge regression is run.
    max_error_samples : int, default=2000
        The kernel-approximation error is measured on at most this many test rows.
    cv_samples : int, default=1000
        Subsample size for :func:`select_gamma_alpha`.
    n_repeats : int, default=1
        Seeds per random-feature method and width.
    random_state : int, default=0
        Seed of the split, the subsamples and (offset by the repeat) the features.
    progress : callable, default=None
        Wraps the iterable of fits, e.g. ``favorkern._commands._progress.progress``;
        called as ``progress(iterable, total=..., desc=...)``.

    Returns
    -------
    results : pandas.DataFrame
        One row per fit: ``method``, ``kernel``, ``n_components`` (``NaN`` for the exact
        model), ``repeat``, ``fit_time``, ``predict_time`` (seconds; predict on the
        whole test set), ``test_r2`` and ``kernel_error`` (relative Frobenius error
        against the exact kernel on the held-out rows).  ``results.attrs`` holds
        ``gamma``, ``alpha``, ``n_train``, ``n_test``, ``n_error_rows``, ``n_dims``,
        ``exact_skipped`` and ``kernel``.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from favorkern.regression import compare_regression
    >>> X, y = load_diabetes(return_X_y=True)
    >>> methods = ["Trigonometric (orthogonal)", "RBFSampler", "KernelRidge (exact)"]
    >>> results = compare_regression(X, y, n_components=[32], methods=methods, cv_samples=200)
    >>> list(results["method"])
    ['KernelRidge (exact)', 'Trigonometric (orthogonal)', 'RBFSampler']
    >>> bool((results["kernel_error"] < 1).all())
    True
    """
    import pandas as pd

    check_option(kernel, "kernel", KERNELS)
    if isinstance(methods, str):  # one method, not its letters
        methods = [methods]
    for method in methods:
        check_option(method, "method", METHODS)
    widths = [check_int(m, "n_components") for m in np.ravel(n_components)]
    if not widths:
        raise ValueError("n_components must list at least one width")
    n_repeats = check_int(n_repeats, "n_repeats")
    max_exact = check_int(max_exact, "max_exact", min_value=0)
    max_error_samples = check_int(max_error_samples, "max_error_samples", min_value=2)
    if not isinstance(test_size, Real) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if not isinstance(random_state, Integral):
        raise TypeError(f"random_state must be an int, got {random_state!r}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.RandomState(random_state)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=rng)
    error_rows = rng.choice(len(y_test), size=min(len(y_test), max_error_samples), replace=False)
    X_eval = X_test[np.sort(error_rows)]

    if gamma is None or alpha is None:
        chosen_gamma, chosen_alpha = select_gamma_alpha(
            X_train, y_train, kernel=kernel, max_samples=cv_samples, random_state=rng
        )
        gamma = chosen_gamma if gamma is None else gamma
        alpha = chosen_alpha if alpha is None else alpha
    gamma = check_positive_real(gamma, "gamma")
    alpha = check_positive_real(alpha, "alpha")

    run_exact = EXACT in methods and len(y_train) <= max_exact
    tasks = [(EXACT, None, 0)] if run_exact else []
    tasks += [
        (method, width, repeat)
        for width in widths
        for repeat in range(n_repeats)
        for method in methods
        if method != EXACT
    ]
    if progress is not None:
        tasks = progress(tasks, total=len(tasks), desc=f"regress ({kernel})")

    split = (X_train, y_train, X_test, y_test, X_eval)
    params = {"kernel": kernel, "gamma": gamma, "alpha": alpha}
    rows = [
        _fit_and_measure(method, width, repeat, random_state, split, params)
        for method, width, repeat in tasks
    ]
    results = pd.DataFrame(rows)
    results.attrs.update(
        gamma=gamma,
        alpha=alpha,
        kernel=kernel,
        n_train=len(y_train),
        n_test=len(y_test),
        n_error_rows=len(X_eval),
        n_dims=X.shape[1],
        exact_skipped=EXACT in methods and not run_exact,
    )
    return results


def summarize_regression(results):
    """Mean over repeats: one row per method and width, in :data:`METHODS` order.

    Parameters
    ----------
    results : pandas.DataFrame
        The output of :func:`compare_regression`.

    Returns
    -------
    summary : pandas.DataFrame
        Columns ``method``, ``n_components``, ``fit_time``, ``predict_time``,
        ``test_r2``, ``kernel_error`` (means) and ``n_repeats``; the exact model
        first, then by width.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.regression import summarize_regression
    >>> results = pd.DataFrame({"method": ["RBFSampler"] * 2, "n_components": [8, 8],
    ...     "repeat": [0, 1], "fit_time": [1.0, 3.0], "predict_time": [0.1, 0.1],
    ...     "test_r2": [0.4, 0.6], "kernel_error": [0.2, 0.4]})
    >>> summarize_regression(results)[["test_r2", "n_repeats"]].round(3).to_numpy().tolist()
    [[0.5, 2.0]]
    """
    columns = ["fit_time", "predict_time", "test_r2", "kernel_error"]
    frame = results.assign(n_components=results["n_components"].fillna(0))
    summary = frame.groupby(["n_components", "method"], sort=False)[columns].mean()
    summary["n_repeats"] = frame.groupby(["n_components", "method"], sort=False).size()
    summary = summary.reset_index()
    order = {name: i for i, name in enumerate(METHODS)}
    summary["_order"] = summary["method"].map(order)
    summary = summary.sort_values(["n_components", "_order"], kind="stable").drop(columns="_order")
    summary["n_components"] = summary["n_components"].replace(0, np.nan)
    summary = summary[["method", "n_components", *columns, "n_repeats"]]
    summary.attrs.update(results.attrs)
    return summary.reset_index(drop=True)


# -- data of any length: the streaming fit ----------------------------------------------
# Tag of the held-out draws' seed sequence, apart from the (random_state, chunk) seeds
# that friedman1 generates its rows from.
_HOLDOUT_STREAM = 1


def peak_rss_mb():
    """Peak resident memory of this process so far, in MiB (``getrusage``; Linux, macOS).

    Examples
    --------
    >>> from favorkern.regression import peak_rss_mb
    >>> peak_rss_mb() > 0
    True
    """
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# Training rows of the first chunk below which the 3-fold CV of gamma fails (every
# validation fold needs two rows for an R^2).
_MIN_CV_ROWS = 6


def _held_out_r2(model, chunks):
    """``(n_test, R^2)`` of ``model`` on the held-out rows of ``(X, y, held_out)`` chunks."""
    n_test, total, total_sq, sse = 0, 0.0, 0.0, 0.0
    for X, y, held_out in chunks:
        if held_out.any():
            y_test = y[held_out]
            residual = y_test - model.predict(X[held_out])
            n_test += len(y_test)
            total += float(y_test.sum())
            total_sq += float(y_test @ y_test)
            sse += float(residual @ residual)
    variance = total_sq - total**2 / n_test if n_test else np.nan
    return n_test, 1.0 - sse / variance if n_test > 1 and variance > 0 else float("nan")


def fit_streaming(
    data,
    *,
    target=None,
    n_samples=None,
    n_components=1024,
    kernel="rbf",
    gamma=None,
    alphas=None,
    test_fraction=0.2,
    chunksize=DEFAULT_CHUNKSIZE,
    batch_size=None,
    random_state=0,
    progress=None,
):
    """Fit :class:`~favorkern.RandomFeatureRidge` over the chunks of a data set of any length.

    Two passes over :func:`~favorkern.datasets.iter_chunks`, memory bounded by one chunk plus a few
    ``n_components`` x ``n_components`` matrices: the first fits (``partial_fit``) the
    training rows of every chunk, the second predicts its held-out rows and
    accumulates ``R^2``.  Each chunk's rows are held out with probability
    ``test_fraction`` (seeded by ``random_state`` and the chunk index).  The model
    is ``StandardScaler -> TrigonometricRandomFeatures(orthogonal)`` fitted on the
    first training block (its mean and scale; the map itself needs only the width),
    then streamed ridge regression; ``gamma`` (when not given) is chosen by
    :func:`select_gamma_alpha` on the first chunk and ``alpha`` over the grid by
    generalized cross-validation on all training rows.

    Parameters
    ----------
    data, target, n_samples, chunksize
        See :func:`~favorkern.datasets.iter_chunks`.
    n_components : int, default=1024
        Width of the feature map.
    kernel : {"rbf", "softmax"}, default="rbf"
    gamma : float, default=None
    alphas : array-like of float, default=None
        The penalty grid; ``None``: 17 values log-spaced from ``1e-6`` to ``100``.
    test_fraction : float, default=0.2
        Fraction of rows held out, in (0, 1).
    batch_size : int, default=None
        Rows per block inside the model (see :class:`~favorkern.RandomFeatureRidge`).
    random_state : int, default=0
        Seed of ``friedman1``, the held-out rows and the feature map.
    progress : callable, default=None
        Wraps the chunk iterables: ``progress(iterable, total=..., desc=...)``
        (``total`` is ``None`` for files).

    Returns
    -------
    result : dict
        ``model`` (fitted), ``test_r2``, ``fit_time`` and ``predict_time`` (seconds,
        reading the data included), ``peak_rss_mb`` (peak resident memory of the
        process at the end) and ``rss_before_mb`` (at the start), ``n_train``,
        ``n_test``, ``n_dims``, ``gamma``, ``alpha``, ``n_components``, ``kernel``.

    Examples
    --------
    >>> from favorkern.regression import fit_streaming
    >>> result = fit_streaming("friedman1", n_samples=20000, chunksize=5000, n_components=256)
    >>> result["n_train"] + result["n_test"], result["test_r2"] > 0.8
    (20000, True)
    """
    check_option(kernel, "kernel", KERNELS)
    n_components = check_int(n_components, "n_components")
    if not isinstance(test_fraction, Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a fraction in (0, 1), got {test_fraction!r}")
    alphas = _ALPHAS if alphas is None else np.ravel(alphas)
    rss_before = peak_rss_mb()

    def chunks(desc):
        stream = iter_chunks(
            data, target=target, n_samples=n_samples, chunksize=chunksize, random_state=random_state
        )
        total = n_chunks(data, n_samples=n_samples, chunksize=chunksize)
        stream = stream if progress is None else progress(stream, total=total, desc=desc)
        for index, (X, y) in enumerate(stream):
            seed = np.random.SeedSequence([random_state, index, _HOLDOUT_STREAM])
            seed = seed.generate_state(1)[0]
            held_out = np.random.default_rng(seed).random(len(y)) < test_fraction
            yield X, y, held_out

    start = time.perf_counter()
    model = None
    n_train = 0
    for X, y, held_out in chunks("fit"):
        if model is None:
            if gamma is None:
                n_fit = int((~held_out).sum())
                if n_fit < _MIN_CV_ROWS:
                    raise ValueError(
                        f"the first chunk holds {n_fit} training rows of {len(y)} (chunksize="
                        f"{chunksize}, test_fraction={test_fraction}): the cross-validation "
                        f"that chooses the logit scale needs at least {_MIN_CV_ROWS}; raise "
                        "chunksize, lower test_fraction or pass gamma"
                    )
                gamma, _ = select_gamma_alpha(
                    X[~held_out], y[~held_out], kernel=kernel, random_state=random_state
                )
            gamma = check_positive_real(gamma, "gamma")
            features = make_pipeline(
                StandardScaler(),
                TrigonometricRandomFeatures(
                    n_components, kernel=kernel, gamma=gamma, random_state=random_state
                ),
            )
            model = RandomFeatureRidge(features, alphas=alphas, batch_size=batch_size)
        if (~held_out).any():
            model.partial_fit(X[~held_out], y[~held_out])
            n_train += int((~held_out).sum())
    if model is None or n_train == 0:
        raise ValueError(f"{data} has no training rows")
    fit_time = time.perf_counter() - start

    start = time.perf_counter()
    n_test, test_r2 = _held_out_r2(model, chunks("predict"))
    if n_test < 2:
        raise ValueError(
            f"{n_test} held-out rows: the test R^2 needs at least 2; raise test_fraction="
            f"{test_fraction} (or n_samples)"
        )
    predict_time = time.perf_counter() - start
    return {
        "model": model,
        "test_r2": test_r2,
        "fit_time": fit_time,
        "predict_time": predict_time,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "n_train": n_train,
        "n_test": n_test,
        "n_dims": model.n_features_in_,
        "gamma": float(gamma),
        "alpha": float(model.alpha_),
        "n_components": n_components,
        "kernel": kernel,
    }

"""Kernel logistic regression on streamed features: :class:`RandomFeatureLogisticRegression`.

The penalized log-likelihood of a linear model on features ``Z = phi(X)`` has no
closed form, but its value and gradient are sums over rows: L-BFGS (Liu & Nocedal
1989) evaluates them one row block at a time, so each iteration is one pass over
the rows and the n x m features are never held.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import optimize, special
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _config
from ._newton import newton_block, newton_minimize
from ._statistics import check_sample_weight, default_batch_size, feature_block, feature_width

__all__ = ["RandomFeatureLogisticRegression", "logistic_block"]


def logistic_block(Z, labels, weights, coef, intercept):
    """Weighted log-loss of one block and its gradient in ``(coef, intercept)``.

    Binary (``coef`` of one row): ``l_i = log(1 + e^{u_i}) - t_i u_i`` with
    ``u = Z w + b`` and ``t_i = [labels_i = 1]``; multinomial (``K`` rows):
    ``l_i = logsumexp(U_i) - U_{i, labels_i}`` with ``U = Z W^T + b``.  The gradient
    is ``R^T Z`` (and ``R^T 1``) with ``R = weights (p - t)``, ``p`` the predicted
    probabilities.

    Parameters
    ----------
    Z : ndarray of shape (n_rows, m)
        Features (float64).
    labels : ndarray of shape (n_rows,)
        Class indices in ``0..K-1``.
    weights : ndarray of shape (n_rows,) or None
    coef : ndarray of shape (1, m) or (K, m)
    intercept : ndarray of shape (1,) or (K,)

    Returns
    -------
    loss : float
        ``sum_i weights_i l_i``.
    grad_coef : ndarray like ``coef``
    grad_intercept : ndarray like ``intercept``

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.linear_model._logistic import logistic_block
    >>> Z = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> loss, g, g0 = logistic_block(Z, np.array([0, 1]), None, np.zeros((1, 2)), np.zeros(1))
    >>> round(loss, 6), g.tolist(), g0.tolist()
    (1.386294, [[0.5, -0.5]], [0.0])
    """
    logits = Z @ coef.T
    logits += intercept
    rows = np.arange(Z.shape[0])
    if coef.shape[0] == 1:
        u = logits[:, 0]
        target = (labels == 1).astype(np.float64)
        losses = np.logaddexp(0.0, u) - target * u
        residual = (special.expit(u) - target)[:, np.newaxis]
    else:
        norm = special.logsumexp(logits, axis=1)
        losses = norm - logits[rows, labels]
        residual = np.exp(logits - norm[:, np.newaxis])
        residual[rows, labels] -= 1.0
    if weights is not None:
        losses = losses * weights
        residual *= weights[:, np.newaxis]
    return float(losses.sum()), residual.T @ Z, residual.sum(axis=0)


class RandomFeatureLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic regression on random (or Nyström) features, streamed: kernel logistic at any n.

    Minimizes the penalized log-loss of scikit-learn's
    :class:`~sklearn.linear_model.LogisticRegression` (``l2`` penalty, intercept
    unpenalized),

    ``C sum_i s_i l_i(W phi(x_i) + b) + |W|^2 / 2``,

    on the features ``phi`` of a fitted transformer, binary (one coefficient row,
    the logistic loss) or multinomial (``K`` rows, the softmax loss), by L-BFGS
    whose every evaluation of the loss and its gradient is one pass over the rows in
    blocks of ``batch_size``.  On the same features it gives scikit-learn's
    coefficients (to the optimizers' tolerance).

    Parameters
    ----------
    features : transformer, default=None
        The feature map, cloned and fitted on the first block of rows in ``fit``
        (``features_``).  ``None``: ``TrigonometricRandomFeatures(kernel="rbf")``.
    C : float, default=1.0
        Inverse penalty strength, > 0, as in ``LogisticRegression``.
    max_iter : int, default=100
        Most L-BFGS iterations or Newton steps (each at least one pass over the rows).
    tol : float, default=1e-6
        Stop when the largest gradient entry of the objective divided by
        ``C sum_i s_i`` is below ``tol`` (scipy's ``gtol``).
    batch_size : int, default=None
        Rows per block; ``None``: :func:`~favorkern.linear_model.default_batch_size`
        of the width (32 MiB of float64 features).  With a single block its features
        are computed once and kept for every pass.
    random_state : int, RandomState instance or None, default=None
        Seed of the default features and of a given ``features`` whose own
        ``random_state`` is ``None`` (a given seed is kept).
    solver : {"lbfgs", "newton"}, default="lbfgs"
        ``"lbfgs"``: one pass per evaluation of the loss and gradient, tens of
        passes.  ``"newton"``: each pass also sums the Hessian (``K (K + 1) / 2``
        weighted Gram products of ``n (m + 1)^2`` multiply-adds) and solves a system
        of ``K (m + 1)`` unknowns, converging in a few passes: it pays where ``m`` and
        the number of classes are small (see Notes).

    Attributes
    ----------
    features_ : transformer
        The fitted feature map.
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, m) or (n_classes, m)
        Coefficients on the features (one row for two classes).
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : ndarray of shape (1,)
        L-BFGS iterations or Newton steps, as scikit-learn stores them.
    n_passes_ : int
        Passes over the rows (evaluations of the loss; 1 when one block is kept).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    Notes
    -----
    **Solver.**  Both solvers need sums over every row at each iteration, so there
    is no ``partial_fit``.  An L-BFGS pass costs about two products of the block's
    features with the coefficients plus the feature map itself; a Newton pass adds
    the Hessian, whose ``(K (m + 1))^2`` entries bound the width it suits (Newton
    with backtracking, as scikit-learn's ``"newton-cholesky"`` solver does on
    in-memory data).  The objective is divided by ``C sum_i s_i`` (the same
    minimizer), so ``tol`` does not depend on the number of rows.  For
    :func:`favorkern.dask.fit_logistic` every pass is one dask computation.

    **Classes.**  Two classes give the logistic loss on one decision function, as
    scikit-learn does; more give the multinomial (softmax) loss, whose intercepts
    are unpenalized and hence fixed only up to a common constant.

    References
    ----------
    D. Liu and J. Nocedal, "On the limited memory BFGS method for large scale
    optimization", Mathematical Programming 45, 1989.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from favorkern import NystroemFeatures, RandomFeatureLogisticRegression
    >>> X, y = make_moons(600, noise=0.1, random_state=0)
    >>> model = RandomFeatureLogisticRegression(
    ...     NystroemFeatures(30, gamma=2.0, random_state=0), C=10.0).fit(X[:400], y[:400])
    >>> model.score(X[400:], y[400:]) > 0.95
    True
    >>> model.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints: dict = {
        "features": [HasMethods(["fit", "transform"]), None],
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "solver": [StrOptions({"lbfgs", "newton"})],
    }

    def __init__(
        self,
        features=None,
        *,
        C=1.0,
        max_iter=100,
        tol=1e-6,
        batch_size=None,
        random_state=None,
        solver="lbfgs",
    ):
        self.features = features
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.solver = solver

    # -- pieces shared with favorkern.dask -------------------------------------------
    def _feature_template(self):
        if self.features is None:
            from ..features import TrigonometricRandomFeatures

            return TrigonometricRandomFeatures(kernel="rbf", random_state=self.random_state)
        template = clone(self.features)
        params = template.get_params(deep=False)
        if self.random_state is not None and params.get("random_state", 0) is None:
            template.set_params(random_state=self.random_state)
        return template

    def resolved_batch_size(self):
        """Rows per block: ``batch_size``, or the default of the features' width."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return default_batch_size(feature_width(self._feature_template()))

    def init_features(self, X, classes):
        """Validate the first rows, set ``classes_`` and return the fitted feature map.

        The entry point of fits that evaluate the loss elsewhere
        (:func:`favorkern.dask.fit_logistic`).

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            The first ``batch_size`` rows.
        classes : array-like
            Every label of the data (at least two).

        Returns
        -------
        features : fitted transformer
        """
        self._validate_params()
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        classes = np.unique(np.asarray(classes))
        if classes.size < 2:
            raise ValueError(
                "RandomFeatureLogisticRegression needs samples of at least 2 classes in "
                f"the data, got one class: {classes.tolist()}"
            )
        self.classes_ = classes
        return self._feature_template().fit(X)

    def minimize(self, features, loss_and_gradient, weight_sum):
        """Run L-BFGS on ``loss_and_gradient(coef, intercept) -> (loss, g_coef, g_intercept)``.

        ``loss_and_gradient`` returns the weighted sums over every row (one pass);
        sets ``coef_``, ``intercept_``, ``n_iter_``, ``n_passes_`` and ``features_``.
        """
        if not weight_sum > 0:
            raise ValueError("sample_weight sums to zero: there is nothing to fit")
        n_rows = 1 if self.classes_.size == 2 else self.classes_.size
        probe = features.transform(np.zeros((1, self.n_features_in_)))
        width = probe.shape[1]
        scale = 1.0 / (float(self.C) * weight_sum)
        passes = [0]

        def objective(params):
            coef = params[: n_rows * width].reshape(n_rows, width)
            intercept = params[n_rows * width :]
            loss, g_coef, g_intercept = loss_and_gradient(coef, intercept)
            passes[0] += 1
            value = float(self.C) * loss * scale + 0.5 * scale * float(np.vdot(coef, coef))
            gradient = np.concatenate(
                [
                    (float(self.C) * g_coef * scale + scale * coef).ravel(),
                    self.C * g_intercept * scale,
                ]
            )
            return value, gradient

        result = optimize.minimize(
            objective,
            np.zeros(n_rows * (width + 1)),
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": int(self.max_iter),
                "gtol": float(self.tol),
                "ftol": 64 * np.finfo(np.float64).eps,
                "maxls": 50,
            },
        )
        if not result.success and result.nit >= self.max_iter:
            warnings.warn(
                f"L-BFGS did not converge in max_iter={self.max_iter} iterations "
                f"(largest gradient entry {np.abs(result.jac).max():.2g} > tol={self.tol}); "
                "raise max_iter or scale the features",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.coef_ = result.x[: n_rows * width].reshape(n_rows, width)
        self.intercept_ = result.x[n_rows * width :].copy()
        self.n_iter_ = np.array([result.nit])
        self.n_passes_ = passes[0]
        self.features_ = features
        return self

    # -- fit -----------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Fit the feature map on the first block, then the coefficients over all rows.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights (frequency weights).

        Returns
        -------
        self : object
        """
        self._validate_params()
        X, y = validate_data(
            self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32], reset=True
        )
        check_classification_targets(y)
        weights = check_sample_weight(sample_weight, X.shape[0])
        batch_size = self.resolved_batch_size()
        features = self.init_features(X[:batch_size], np.unique(y))
        if self.solver == "newton":
            return self._fit_newton(features, X, y, weights, batch_size)
        labels = np.searchsorted(self.classes_, y)
        blocks = [
            (start, min(start + batch_size, X.shape[0]))
            for start in range(0, X.shape[0], batch_size)
        ]
        kept = feature_block(features, X) if len(blocks) == 1 else None

        def loss_and_gradient(coef, intercept):
            total, g_coef, g_intercept = 0.0, np.zeros_like(coef), np.zeros_like(intercept)
            for start, stop in blocks:
                Z = kept if kept is not None else feature_block(features, X[start:stop])
                w = None if weights is None else weights[start:stop]
                loss, g, g0 = logistic_block(Z, labels[start:stop], w, coef, intercept)
                total += loss
                g_coef += g
                g_intercept += g0
            return total, g_coef, g_intercept

        weight_sum = float(X.shape[0] if weights is None else weights.sum())
        return self.minimize(features, loss_and_gradient, weight_sum)

    def _fit_newton(self, features, X, y, weights, batch_size):
        """Newton steps, each one pass summing the loss, gradient and Hessian."""
        rows = 1 if self.classes_.size == 2 else self.classes_.size
        width = features.transform(np.zeros((1, self.n_features_in_))).shape[1]
        if rows * (width + 1) > _config.NEWTON_MAX_UNKNOWNS:
            raise ValueError(
                f"solver='newton' would solve {rows * (width + 1)} unknowns per step "
                f"({rows} coefficient rows x {width + 1}), more than "
                f"NEWTON_MAX_UNKNOWNS={_config.NEWTON_MAX_UNKNOWNS} (its Hessian alone "
                f"{8 * (rows * (width + 1)) ** 2 / 2**20:.0f} MiB): use solver='lbfgs'"
            )
        labels = np.searchsorted(self.classes_, y)
        n = X.shape[0]
        weight_sum = float(n if weights is None else weights.sum())
        if not weight_sum > 0:
            raise ValueError("sample_weight sums to zero: there is nothing to fit")
        kept = feature_block(features, X) if n <= batch_size else None

        def evaluate(coef, intercept, hessian):
            total, g, H = 0.0, 0.0, 0.0
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                Z = kept if kept is not None else feature_block(features, X[start:stop])
                w = None if weights is None else weights[start:stop]
                part = newton_block(Z, labels[start:stop], w, coef, intercept, hessian)
                total += part[0]
                if hessian:
                    g, H = g + part[1], H + part[2]
            return total, (g if hessian else None), (H if hessian else None)

        params, n_iter, passes, gradient_max = newton_minimize(
            evaluate, rows, width, float(self.C), float(self.tol), int(self.max_iter), weight_sum
        )
        if gradient_max > self.tol:
            warnings.warn(
                f"Newton did not converge in max_iter={self.max_iter} steps (largest "
                f"gradient entry {gradient_max:.2g} > tol={self.tol}); raise max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.coef_ = params[:, :-1].copy()
        self.intercept_ = params[:, -1].copy()
        self.n_iter_ = np.array([n_iter])
        self.n_passes_ = passes
        self.features_ = features
        return self

    # -- prediction ----------------------------------------------------------------
    def _blocks(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        size = self.resolved_batch_size()
        for start in range(0, X.shape[0], size):
            yield (
                feature_block(self.features_, X[start : start + size]) @ self.coef_.T
                + self.intercept_
            )

    def decision_function(self, X):
        """Decision values: ``(n,)`` for two classes (positive: ``classes_[1]``), else ``(n, K)``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        scores = np.concatenate(list(self._blocks(X)), axis=0)
        return scores[:, 0] if self.coef_.shape[0] == 1 else scores

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = special.expit(scores)
            return np.column_stack([1.0 - positive, positive])
        return special.softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed without underflow.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack([-np.logaddexp(0.0, scores), -np.logaddexp(0.0, -scores)])
        return special.log_softmax(scores, axis=1)

    def predict(self, X):
        """Most probable class of each row.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

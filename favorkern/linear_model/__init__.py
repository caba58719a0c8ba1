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
pieces on dask workers.  :class:`RandomFeatureLogisticRegression` minimizes the
log-loss by L-BFGS, one pass over the row blocks per evaluation
(:func:`favorkern.dask.fit_logistic` on dask).
"""

from ._logistic import RandomFeatureLogisticRegression
from ._ridge import RandomFeatureRidge, RandomFeatureRidgeClassifier, encode_labels
from ._solver import RidgeSolver
from ._statistics import RidgeStatistics, default_batch_size

__all__ = [
    "RandomFeatureLogisticRegression",
    "RandomFeatureRidge",
    "RandomFeatureRidgeClassifier",
    "RidgeStatistics",
    "RidgeSolver",
    "encode_labels",
    "default_batch_size",
]

# Shared with favorkern.dask: one internal import point (not public, outside __all__).
from ._logistic import logistic_block  # noqa: E402, F401
from ._statistics import check_alphas, check_sample_weight, feature_block  # noqa: E402, F401

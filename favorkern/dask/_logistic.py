"""Kernel logistic regression on dask arrays: :func:`fit_logistic`.

Every L-BFGS evaluation of the loss and its gradient is one dask computation: each
row chunk gives its weighted log-loss and gradient sums on a worker (the block
function of :class:`~favorkern.RandomFeatureLogisticRegression`), summed in a tree;
the ``(K m)``-vector update runs on the client.
"""

from __future__ import annotations

import dask
import numpy as np

from ..linear_model import (
    RandomFeatureLogisticRegression,
    check_sample_weight,
    feature_block,
    logistic_block,
)
from ._cluster import tree_reduce
from ._ridge import _ridge_rows

_FAN_IN = 8

__all__ = ["fit_logistic"]


def _chunk_loss(features, X_chunk, labels, weights, coef, intercept, batch_size):
    total, g_coef, g_intercept = 0.0, np.zeros_like(coef), np.zeros_like(intercept)
    for start in range(0, X_chunk.shape[0], batch_size):
        stop = start + batch_size
        Z = feature_block(features, X_chunk[start:stop])
        w = None if weights is None else check_sample_weight(weights[start:stop], Z.shape[0])
        loss, g, g0 = logistic_block(Z, labels[start:stop], w, coef, intercept)
        total += loss
        g_coef += g
        g_intercept += g0
    return total, g_coef, g_intercept


def _add(*parts):
    return (
        sum(part[0] for part in parts),
        sum(part[1] for part in parts),
        sum(part[2] for part in parts),
    )


def _labels(y_chunk, classes):
    y_chunk = np.asarray(y_chunk)
    index = np.searchsorted(classes, y_chunk)
    index = np.minimum(index, classes.size - 1)
    if not np.array_equal(classes[index], y_chunk):
        raise ValueError("y holds labels that are not in the data's classes")
    return index


def fit_logistic(model, X, y, sample_weight=None):
    """Fit a :class:`~favorkern.RandomFeatureLogisticRegression` on dask arrays.

    The feature map is fitted on the client on the first ``batch_size`` rows (as
    in-memory ``fit`` does); each L-BFGS iteration computes the chunks' loss and
    gradient sums on the workers, ``batch_size`` rows at a time, and sums them in a
    tree.  The labels are encoded once and kept on the workers; ``X`` is read once
    per evaluation (persist it when it is computed from other arrays).  The
    coefficients equal those of ``model.fit`` on the same rows in memory, to the
    optimizer's tolerance (the sums are added in another order).

    Parameters
    ----------
    model : RandomFeatureLogisticRegression
        Fitted in place.
    X : dask.array.Array of shape (n_samples, n_features)
        Chunked along rows (column chunks are merged).
    y : dask.array.Array or ndarray of shape (n_samples,)
        Class labels, rechunked to the row chunks of ``X``.
    sample_weight : dask.array.Array or ndarray of shape (n_samples,), default=None

    Returns
    -------
    model : the fitted model

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> from sklearn.datasets import make_moons
    >>> from favorkern import RandomFeatureLogisticRegression
    >>> from favorkern.dask import fit_logistic
    >>> X, y = make_moons(1000, noise=0.1, random_state=0)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     model = fit_logistic(RandomFeatureLogisticRegression(C=10.0, random_state=0),
    ...                          da.from_array(X, chunks=250), da.from_array(y, chunks=250))
    >>> reference = RandomFeatureLogisticRegression(C=10.0, random_state=0).fit(X, y)
    >>> bool(abs(model.coef_ - reference.coef_).max() < 1e-4)
    True
    """
    import dask.array as da

    if not isinstance(model, RandomFeatureLogisticRegression):
        raise TypeError(
            f"model must be a RandomFeatureLogisticRegression, got {type(model).__name__}"
        )
    if model.solver != "lbfgs":
        raise ValueError(
            f"fit_logistic runs the L-BFGS solver: set solver='lbfgs' (got solver={model.solver!r})"
        )
    X = _ridge_rows(X, "X")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    row_chunks = X.chunks[0]
    y = _ridge_rows(y, "y", X.shape[0], row_chunks)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D class labels, got shape {y.shape}")
    weights = _ridge_rows(sample_weight, "sample_weight", X.shape[0], row_chunks)
    if weights is not None and weights.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {weights.shape}")
    batch_size = model.resolved_batch_size()
    classes = np.unique(da.unique(y).compute())
    head = min(batch_size, X.shape[0])
    features = model.init_features(X[:head].compute(), classes)
    features_key = dask.delayed(features)
    classes_key = dask.delayed(classes)
    x_blocks = X.to_delayed().ravel()
    label_blocks = dask.persist(
        *[dask.delayed(_labels)(block, classes_key) for block in y.to_delayed().ravel()]
    )
    if weights is None:
        w_blocks = [None] * len(x_blocks)
        weight_sum = float(X.shape[0])
    else:
        w_blocks = list(dask.persist(*weights.to_delayed().ravel()))
        weight_sum = float(weights.sum().compute())
        if not np.isfinite(weight_sum) or weight_sum < 0:
            raise ValueError("sample_weight must be finite and non-negative")

    def loss_and_gradient(coef, intercept):
        parts = [
            dask.delayed(_chunk_loss, pure=True)(
                features_key, xb, lb, wb, coef, intercept, batch_size
            )
            for xb, lb, wb in zip(x_blocks, label_blocks, w_blocks, strict=True)
        ]
        total = tree_reduce(parts, lambda *group: dask.delayed(_add)(*group), _FAN_IN)
        return dask.compute(total)[0]

    return model.minimize(features, loss_and_gradient, weight_sum)

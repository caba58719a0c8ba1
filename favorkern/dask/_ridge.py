"""Streaming ridge regression and classification on dask arrays: :func:`fit` and
:func:`predict` for :class:`~favorkern.RandomFeatureRidge` and
:class:`~favorkern.RandomFeatureRidgeClassifier`.

Each row chunk yields its :class:`~favorkern.linear_model.RidgeStatistics` on a worker;
they are merged in a tree and the ``m x m`` solve runs on the client.  With several
alphas a second pass over the chunks sums the exact leave-one-out errors (the solver,
one ``m x m`` eigenbasis, is shipped once).
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted

from .. import _config
from ..linear_model import (
    RandomFeatureRidge,
    RandomFeatureRidgeClassifier,
    RidgeStatistics,
    check_alphas,
    encode_labels,
)
from ._cluster import tree_reduce


def _ridge_rows(array, name, n_rows=None, row_chunks=None):
    """``array`` as a dask array chunked along rows only (matching ``row_chunks``)."""
    if array is None:
        return None
    if not isinstance(array, da.Array):
        if row_chunks is None:
            raise TypeError(f"{name} must be a dask array, got {type(array).__name__}")
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != n_rows:
            raise ValueError(f"{name} has shape {array.shape}, X has {n_rows} rows")
        array = da.from_array(array, chunks=(row_chunks,) + array.shape[1:])
    if array.ndim not in (1, 2) or (name == "X" and array.ndim != 2):
        raise ValueError(
            f"{name} must be {'2-D' if name == 'X' else '1-D or 2-D'}, got shape {array.shape}"
        )
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    if n_rows is not None and array.shape[0] != n_rows:
        raise ValueError(f"{name} has {array.shape[0]} rows, X has {n_rows}")
    chunks = {0: row_chunks if row_chunks is not None else array.chunks[0]}
    if array.ndim == 2:
        chunks[1] = -1
    return array.rechunk(chunks)


def _ridge_chunk_statistics(features, X_block, y_block, w_block, batch_size, classes):
    targets = y_block if classes is None else encode_labels(y_block, classes)
    return RidgeStatistics.from_features(features, X_block, targets, w_block, batch_size=batch_size)


def _ridge_chunk_loo(solver, features, X_block, y_block, w_block, alphas, batch_size, classes):
    targets = y_block if classes is None else encode_labels(y_block, classes)
    return solver.loo_errors(
        features, X_block, targets, w_block, alphas=alphas, batch_size=batch_size
    )


def _ridge_merge(*parts):
    total = parts[0].copy()
    for part in parts[1:]:
        total = total.merge(part)
    return total


def _ridge_sum(*parts):
    return np.sum(parts, axis=0)


def _ridge_tree(parts, combine):
    return tree_reduce(parts, dask.delayed(combine, pure=True), _config.DASK_RIDGE_FAN_IN)


def fit(model, X, y, sample_weight=None):
    """Fit a :class:`~favorkern.RandomFeatureRidge` (or the classifier) on dask arrays.

    The feature map is fitted on the client on the first ``batch_size`` rows (as
    in-memory ``fit`` does); every row chunk's sufficient statistics
    (:class:`favorkern.linear_model.RidgeStatistics`) are computed on the workers,
    ``batch_size`` rows at a time, merged in a tree (exact pairwise centring), and
    the solve runs on the client.  With several ``alphas`` a second pass over the
    chunks sums the exact leave-one-out errors, so ``alpha_`` and the coefficients
    equal those of ``model.fit`` on the same rows in memory, to rounding.

    Parameters
    ----------
    model : RandomFeatureRidge or RandomFeatureRidgeClassifier
        Fitted in place.
    X : dask.array.Array of shape (n_samples, n_features)
        Chunked along rows (column chunks are merged).
    y : dask.array.Array or ndarray of shape (n_samples,) or (n_samples, n_targets)
        Rechunked to the row chunks of ``X``.
    sample_weight : dask.array.Array or ndarray of shape (n_samples,), default=None

    Returns
    -------
    model : the fitted model

    Examples
    --------
    >>> import dask.array as da
    >>> from sklearn.datasets import make_friedman1
    >>> from favorkern import RandomFeatureRidge
    >>> from favorkern.dask import fit, predict
    >>> X, y = make_friedman1(n_samples=2000, random_state=0)
    >>> X_dask, y_dask = da.from_array(X, chunks=500), da.from_array(y, chunks=500)
    >>> model = fit(RandomFeatureRidge(alphas=[0.01, 0.1]), X_dask, y_dask)
    >>> bool(abs(model.coef_ - RandomFeatureRidge(alphas=[0.01, 0.1]).fit(X, y).coef_).max() < 1e-8)
    True
    >>> predict(model, X_dask).chunks
    ((500, 500, 500, 500),)
    """
    if not isinstance(model, (RandomFeatureRidge, RandomFeatureRidgeClassifier)):
        raise TypeError(
            "model must be a RandomFeatureRidge or RandomFeatureRidgeClassifier, "
            f"got {type(model).__name__}"
        )
    model._validate_params()
    alphas = check_alphas(model.alphas)  # before any chunk is computed
    X = _ridge_rows(X, "X")
    row_chunks = X.chunks[0]
    y = _ridge_rows(y, "y", X.shape[0], row_chunks)
    weights = _ridge_rows(sample_weight, "sample_weight", X.shape[0], row_chunks)
    if weights is not None and weights.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {weights.shape}")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    batch_size = model.resolved_batch_size()
    classes = None
    if is_classifier(model):
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels for a classifier, got shape {y.shape}")
        classes = np.unique(da.unique(y).compute())
    head = min(batch_size, X.shape[0])
    first_X, first_y = dask.compute(X[:head], y[:head])
    features = model.init_features(first_X, first_y, classes=classes)
    features_key = dask.delayed(features)
    x_blocks = X.to_delayed().ravel()
    y_blocks = y.to_delayed().ravel()
    w_blocks = [None] * len(x_blocks) if weights is None else list(weights.to_delayed().ravel())
    blocks = list(zip(x_blocks, y_blocks, w_blocks, strict=True))
    parts = [
        dask.delayed(_ridge_chunk_statistics, pure=True)(
            features_key, xb, yb, wb, batch_size, classes
        )
        for xb, yb, wb in blocks
    ]
    (statistics,) = dask.compute(_ridge_tree(parts, _ridge_merge))
    loo_errors = None
    if alphas.size > 1 and statistics.weight_sum > 0:
        solver = statistics.solver(fit_intercept=model.fit_intercept)
        solver_key = dask.delayed(solver)
        parts = [
            dask.delayed(_ridge_chunk_loo, pure=True)(
                solver_key, features_key, xb, yb, wb, alphas, batch_size, classes
            )
            for xb, yb, wb in blocks
        ]
        (loo_errors,) = dask.compute(_ridge_tree(parts, _ridge_sum))
    return model.fit_statistics(features, statistics, loo_errors=loo_errors)


def _ridge_predict_block(model, X_block, return_std):
    if return_std:
        mean, std = model.predict(X_block, return_std=True)
        return np.stack([mean, std], axis=-1)
    return model.predict(X_block)


def predict(model, X, return_std=False):
    """Blockwise predictions of a fitted ridge model on a dask array (lazy).

    Parameters
    ----------
    model : fitted RandomFeatureRidge or RandomFeatureRidgeClassifier
    X : dask.array.Array of shape (n_samples, n_features)
    return_std : bool, default=False
        Regressor only: also the predictive standard deviation.

    Returns
    -------
    y_pred : dask.array.Array of shape (n_samples,) or (n_samples, n_targets)
        Chunked like the rows of ``X``.
    y_std : dask.array.Array, only when ``return_std``

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import RandomFeatureRidge
    >>> from favorkern.dask import predict
    >>> X = np.random.default_rng(0).uniform(size=(1000, 3))
    >>> model = RandomFeatureRidge().fit(X, X.sum(axis=1))
    >>> mean, std = predict(model, da.from_array(X, chunks=250), return_std=True)
    >>> mean.chunks, bool(np.allclose(mean.compute(), model.predict(X)))
    (((250, 250, 250, 250),), True)
    """
    check_is_fitted(model)
    if not isinstance(return_std, (bool, np.bool_)):
        raise TypeError(f"return_std must be a bool, got {return_std!r}")
    if return_std and is_classifier(model):
        raise ValueError("return_std applies to RandomFeatureRidge only")
    X = _ridge_rows(X, "X")
    if X.shape[1] != model.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, the model expects {model.n_features_in_}")
    model_key = dask.delayed(model)
    if is_classifier(model):
        dtype, width = model.classes_.dtype, ()
    else:
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        width = () if np.ndim(model.coef_) == 1 else (np.shape(model.coef_)[0],)
    pieces = []
    for i, block in enumerate(X.to_delayed().ravel()):
        shape = (X.chunks[0][i],) + width + ((2,) if return_std else ())
        task = dask.delayed(_ridge_predict_block, pure=True)(model_key, block, bool(return_std))
        pieces.append(
            da.from_delayed(task, shape, dtype=dtype, meta=np.empty((0,) * len(shape), dtype=dtype))
        )
    out = da.concatenate(pieces, axis=0)
    if return_std:
        return out[..., 0], out[..., 1]
    return out

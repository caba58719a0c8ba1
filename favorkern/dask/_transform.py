"""Random features of dask arrays: blockwise ``transform`` and :class:`DaskTransformer`."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..feature_maps import apply_feature_map
from ._cluster import as_dask, check_last_axis, checked_block

# -- transform --------------------------------------------------------------------


def _transform_block(block, spec):
    if sp.issparse(block):
        return apply_feature_map(_checked_sparse_block(block, "X"), spec)
    return apply_feature_map(checked_block(block, "X"), spec)


def _checked_sparse_block(block, name):
    """A CSR block of float32/float64 values; non-finite stored values raise."""
    block = sp.csr_matrix(block)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float64)
    if not np.isfinite(block.data).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return block


def _is_sparse(X) -> bool:
    """True for a dask array whose blocks are scipy.sparse matrices."""
    return sp.issparse(getattr(X, "_meta", None))


def reject_sparse(X, name):
    if _is_sparse(X):
        raise TypeError(
            f"{name} has scipy.sparse blocks; attention needs dense blocks: "
            f"{name}.map_blocks(lambda b: b.toarray())"
        )


def transform(estimator, X):
    """Random features of a dask array, block by block, through a fitted transformer.

    Each row block ``X_b`` becomes ``estimator.transform(X_b)`` (the same feature map
    code, so the same numbers as the in-memory ``transform``); the output declares
    its real chunks ``(X.chunks[0], (n_components,))`` and dtype.

    Parameters
    ----------
    estimator : fitted favorkern transformer
        ``PositiveRandomFeatures``, ``HyperbolicRandomFeatures``,
        ``TrigonometricRandomFeatures``, ``GeneralizedRandomFeatures`` or
        ``OptimalPositiveRandomFeatures``, already fitted (on in-memory data).
    X : dask array of shape (n_samples, n_features)
        Chunked along rows only (one chunk along columns).  float32 stays float32,
        other numeric input becomes float64.  A NumPy array is wrapped with automatic
        row chunks.  Blocks may be dense or ``scipy.sparse`` matrices (e.g. from
        ``X.map_blocks(scipy.sparse.csr_matrix)``); the output blocks are dense.

    Returns
    -------
    X_new : dask array of shape (n_samples, n_components)
        Lazy; chunks ``(X.chunks[0], (n_components,))``.

    Raises
    ------
    ValueError
        If ``X`` is chunked along columns, has the wrong number of features, or (at
        compute time) contains NaN or infinity.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures
    >>> from favorkern.dask import transform
    >>> X = np.random.default_rng(0).normal(size=(10, 4))
    >>> features = PositiveRandomFeatures(n_components=6, random_state=0).fit(X)
    >>> X_new = transform(features, da.from_array(X, chunks=(3, 4)))
    >>> X_new.chunks
    ((3, 3, 3, 1), (6,))
    >>> bool(np.allclose(X_new.compute(), features.transform(X)))
    True
    """
    if not hasattr(estimator, "_spec"):
        raise TypeError(
            "estimator must be a favorkern random-feature transformer, got "
            f"{type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    X = as_dask(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got shape {X.shape}")
    check_last_axis(X, "X")
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input"
        )
    dtype = np.dtype(np.float32 if X.dtype == np.float32 else np.float64)
    X = X.astype(dtype, copy=False)
    spec = estimator._spec()
    n_out = spec.weights.shape[0]
    # One graph key for the spec: workers fetch the projection once, not once per task.
    spec_key = dask.delayed(spec, name=f"favorkern-spec-{tokenize(spec)}")
    return X.map_blocks(
        _transform_block,
        spec_key,
        chunks=(X.chunks[0], (n_out,)),
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        name=f"favorkern-transform-{tokenize(X, spec)}",
    )


class DaskTransformer(TransformerMixin, BaseEstimator):
    """Wrap a favorkern transformer so that ``transform`` accepts dask arrays.

    The role of dask-ml's ``ParallelPostFit`` for random features, with the right
    output chunks: fit on an in-memory sample (the random features need only the
    input width, except ``OptimalPositiveRandomFeatures``, which estimates its
    parameter from the data), then transform dask arrays blockwise with
    :func:`transform`; NumPy / pandas input goes to the wrapped ``transform``.
    ``set_output(transform="pandas")`` (or ``"polars"``) applies to in-memory input
    only: with dask input it raises ``ValueError`` rather than compute the result
    into memory.

    Parameters
    ----------
    estimator : favorkern transformer
        Fitted or not.  If :meth:`fit` is never called, the estimator must already be
        fitted and is used as it is.

    Attributes
    ----------
    estimator_ : favorkern transformer
        A fitted clone of ``estimator`` (after :meth:`fit`).
    n_features_in_ : int
        Number of features seen by the wrapped estimator.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from favorkern import TrigonometricRandomFeatures
    >>> from favorkern.dask import DaskTransformer
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> model = DaskTransformer(TrigonometricRandomFeatures(8, random_state=0)).fit(X[:5])
    >>> model.transform(da.from_array(X, chunks=(7, 3))).chunks
    ((7, 7, 6), (8,))
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y=None):
        """Fit a clone of ``estimator`` on in-memory ``X``; returns ``self``.

        A dask collection raises ``TypeError``: fit on a sample that fits in memory.
        """
        if dask.is_dask_collection(X):
            raise TypeError(
                "X must be in memory for fit (random features need only its width; fit on "
                "a sample, e.g. X[:1000].compute()), got a dask collection"
            )
        self.estimator_ = clone(self.estimator).fit(X, y)
        return self

    def _fitted(self):
        if hasattr(self, "estimator_"):
            return self.estimator_
        check_is_fitted(self.estimator)
        return self.estimator

    @property
    def n_features_in_(self):
        return self._fitted().n_features_in_

    def transform(self, X):
        """Random features of ``X``: a dask array for dask input (see :func:`transform`)."""
        estimator = self._fitted()
        if isinstance(X, da.Array):
            self._check_lazy_output()
            return transform(estimator, X)
        return estimator.transform(X)

    def _check_lazy_output(self):
        """``set_output(transform="pandas")`` would compute the dask result into memory."""
        from sklearn.utils._set_output import _get_output_config

        container = _get_output_config("transform", self)["dense"]
        if container != "default":
            raise ValueError(
                f"set_output(transform={container!r}) would compute the whole dask result "
                "into memory; for dask input use set_output(transform='default') and "
                "convert lazily, e.g. dask.dataframe.from_dask_array(X_new, columns="
                "model.get_feature_names_out())"
            )

    def get_feature_names_out(self, input_features=None):
        """Output feature names of the wrapped estimator."""
        return self._fitted().get_feature_names_out(input_features)

    def __sklearn_is_fitted__(self):
        try:
            self._fitted()
        except Exception:
            return False
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self.estimator.__sklearn_tags__().input_tags.sparse
        return tags

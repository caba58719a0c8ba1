"""Exact kernels and kernel matrices from fitted random features."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._validation import check_float_array, check_option, check_positive_real

__all__ = ["softmax_kernel", "exact_kernel", "approximate_kernel"]


def _pair(X, Y):
    X = check_float_array(X, "X", ndim=2)
    if Y is None:
        return X, X
    Y = check_float_array(Y, "Y", ndim=2)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of features, got {X.shape[1]} and {Y.shape[1]}"
        )
    dtype = np.result_type(X.dtype, Y.dtype)
    return X.astype(dtype, copy=False), Y.astype(dtype, copy=False)


def softmax_kernel(X, Y=None, *, gamma=1.0):
    """Exact softmax kernel ``K[i, j] = exp(gamma * X[i] . Y[j])``.

    Parameters
    ----------
    X : array-like of shape (n_samples_X, n_features)
    Y : array-like of shape (n_samples_Y, n_features), default=None
        ``None`` means ``Y = X``.
    gamma : float, default=1.0
        Scale, > 0.

    Returns
    -------
    kernel : ndarray of shape (n_samples_X, n_samples_Y)
        float32 if both inputs are float32, else float64.  Entries whose value
        exceeds the dtype's range are ``inf`` (the kernel itself overflows there).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import softmax_kernel
    >>> softmax_kernel(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 1.0]]))
    array([[7.3890561, 1.       ]])
    """
    gamma = check_positive_real(gamma, "gamma")
    X, Y = _pair(X, Y)
    with np.errstate(over="ignore"):
        return np.exp(gamma * (X @ Y.T))


def exact_kernel(X, Y=None, *, kernel="softmax", gamma=1.0):
    """Exact kernel matrix of the kernels the random features estimate.

    ``"softmax"``: ``K[i, j] = exp(gamma * X[i] . Y[j])`` (:func:`softmax_kernel`);
    ``"rbf"``: ``K[i, j] = exp(-gamma * |X[i] - Y[j]|^2)``
    (:func:`sklearn.metrics.pairwise.rbf_kernel`; where its expansion
    ``|x|^2 + |y|^2 - 2 x.y`` overflows, from the differences themselves).

    Parameters
    ----------
    X : array-like of shape (n_samples_X, n_features)
    Y : array-like of shape (n_samples_Y, n_features), default=None
        ``None`` means ``Y = X``.
    kernel : {"softmax", "rbf"}, default="softmax"
    gamma : float, default=1.0
        Scale, > 0.

    Returns
    -------
    kernel : ndarray of shape (n_samples_X, n_samples_Y)
        float32 if both inputs are float32, else float64.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import exact_kernel
    >>> exact_kernel(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]), kernel="rbf", gamma=0.5)
    array([[0.60653066]])
    """
    check_option(kernel, "kernel", ("softmax", "rbf"))
    if kernel == "softmax":
        return softmax_kernel(X, Y, gamma=gamma)
    from sklearn.metrics.pairwise import rbf_kernel

    gamma = check_positive_real(gamma, "gamma")
    X, Y = _pair(X, Y)
    # The expansion |x|^2 + |y|^2 - 2 x.y loses gamma eps |x|^2 in the exponent (and
    # overflows at huge norms): beyond a small loss, the differences themselves.
    peak = max(
        float(np.einsum("ij,ij->i", A, A, dtype=np.float64).max(initial=0.0))
        for A in ((X,) if Y is X else (X, Y))
    )
    if 4.0 * gamma * peak * np.finfo(np.float64).eps <= _RBF_EXPANSION_LOSS:
        return rbf_kernel(X, Y, gamma=gamma)
    from scipy.spatial.distance import cdist

    with np.errstate(over="ignore"):  # |x - y|^2 = inf gives 0, as it should
        return np.exp(-gamma * cdist(X, Y, "sqeuclidean")).astype(np.result_type(X, Y))


# Largest loss in the rbf exponent tolerated from the expansion of |x - y|^2.
_RBF_EXPANSION_LOSS = 1e-8


def approximate_kernel(X, Y=None, *, features):
    """Kernel matrix ``phi(X) phi(Y)^T`` from a fitted random-feature transformer.

    Parameters
    ----------
    X : array-like of shape (n_samples_X, n_features)
    Y : array-like of shape (n_samples_Y, n_features), default=None
        ``None`` means ``Y = X`` (and ``phi(X)`` is computed once).
    features : fitted transformer
        Any fitted favorkern transformer (or one with a ``transform`` method, such
        as :class:`sklearn.kernel_approximation.RBFSampler`).

    Returns
    -------
    kernel : ndarray of shape (n_samples_X, n_samples_Y)

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import PositiveRandomFeatures, approximate_kernel, softmax_kernel
    >>> X = np.random.default_rng(1).normal(scale=0.3, size=(4, 6))
    >>> prf = PositiveRandomFeatures(8192, random_state=0).fit(X)
    >>> bool(np.allclose(approximate_kernel(X, features=prf), softmax_kernel(X), atol=0.1))
    True
    """
    if not hasattr(features, "transform"):
        raise TypeError(
            "features must be a fitted transformer with a transform method, "
            f"got {type(features).__name__}"
        )
    check_is_fitted(features)
    phi_x = features.transform(X)
    phi_y = phi_x if Y is None else features.transform(Y)
    return phi_x @ phi_y.T

"""Error of FAVOR attention against exact attention, per output row."""

from __future__ import annotations

import numpy as np

__all__ = ["attention_error", "row_errors"]


def attention_error(
    Q,
    K,
    V,
    *,
    causal=False,
    n_components=None,
    feature_map="positive",
    projection="orthogonal",
    gamma=None,
    projection_matrix=None,
    random_state=None,
):
    """Per-row relative error of :func:`favorkern.favor_attention` against exact attention.

    Parameters
    ----------
    Q, K : array-like of shape (..., L, d)
    V : array-like of shape (..., L, dv)
    causal : bool, default=False
    n_components : int or None, default=None
        Output width of the feature map (256 if None).
    feature_map : str or FeatureMap, default="positive"
        A registered map (see :func:`favorkern.favor_attention`).
    projection : str, default="orthogonal"
    gamma : float, optional
        Logit scale (default ``1 / sqrt(d)``).
    projection_matrix : ndarray, optional
    random_state : int, RandomState instance or None, default=None
        Passed to :func:`favorkern.favor_attention`.

    Returns
    -------
    errors : ndarray of shape (..., L)
        ``|approx_i - exact_i|_2 / |exact_i|_2`` per output row (the absolute
        error where an exact row is zero).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import attention_error
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = (rng.normal(scale=0.5, size=(64, 16)) for _ in range(3))
    >>> errors = attention_error(Q, K, V, n_components=256, random_state=0)
    >>> errors.shape
    (64,)
    >>> bool(np.median(errors) < 0.2)
    True
    """
    from ..attention import favor_attention, softmax_attention  # sklearn: imported on use

    exact = np.asarray(softmax_attention(Q, K, V, causal=causal, gamma=gamma))
    approx = np.asarray(
        favor_attention(
            Q,
            K,
            V,
            causal=causal,
            n_components=n_components,
            feature_map=feature_map,
            projection=projection,
            gamma=gamma,
            projection_matrix=projection_matrix,
            random_state=random_state,
        )
    )
    return row_errors(approx, exact)


def row_errors(approx, exact):
    """``|approx_i - exact_i|_2 / |exact_i|_2`` per row (the absolute error where exact is 0).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import row_errors
    >>> row_errors(np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 0.0]]))
    array([1., 1.])
    """
    diff = np.linalg.norm(np.asarray(approx, dtype=np.float64) - exact, axis=-1)
    norm = np.linalg.norm(np.asarray(exact, dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)

"""Whitened queries and keys, then isotropic features (data-aware whitening).

Pretrained queries and keys are anisotropic, and the variance of isotropic
positive features grows as ``exp(|q' + k'|^2)``.  The map whitens one side by the
inverse square root of its covariance and maps the other by the inverse transpose,
so every logit is unchanged (``q -> M q``, ``k -> M^-T k``, ``(Mq).(M^-T k) = q.k``),
then runs an isotropic map on the result (``"optimal"``: GERF with the fitted ``A*``,
or ``"positive"``).  A scalar in ``M`` balances the mean squared norms of the two
sides.  In the spirit of DARKFormer (Farzam et al., 2026), which learns the
projection covariance instead; here it is fitted in closed form.

Unbiased for ``exp(q'.k')`` for any fitted constants.
"""

from __future__ import annotations

import numpy as np

from .._parallel import blas_single_thread
from ._base import FeatureMap, linear_prepare
from .derf import DEFAULT_RIDGE, _dense
from .optimal import OptimalFeatureMap, homogeneity_sum_sq, optimal_gerf_a, optimal_positive_spec

__all__ = ["WhitenedFeatureMap", "whitening_transform"]

SIDES = ("query", "key")
BASES = ("optimal", "positive")


def whitening_transform(X, Y, side="query", ridge=DEFAULT_RIDGE):
    """``(T_query, T_key)`` with ``T_key = T_query^-T``: ``side``'s covariance whitened.

    ``C`` is the covariance of ``X`` (``side="query"``) or ``Y`` (``"key"``) plus a
    relative ``ridge``; the whitened side is mapped by ``s C^(-1/2)``, the other by
    ``C^(1/2) / s``, with ``s`` making the mean squared norms of both sides equal.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.whitened import whitening_transform
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.normal(size=(2, 500, 3)) * [[4.0, 1.0, 0.1]]
    >>> Tq, Tk = whitening_transform(X, Y)
    >>> bool(np.allclose(Tq.T @ Tk, np.eye(3)))
    True
    >>> np.round(np.cov((X @ Tq.T).T) / np.cov((X @ Tq.T).T)[0, 0], 2).diagonal()
    array([1., 1., 1.])
    """
    Z = X if side == "query" else Y
    C = np.atleast_2d(np.cov(Z.T, bias=True)) if Z.shape[0] > 1 else np.zeros((Z.shape[1],) * 2)
    C = 0.5 * (C + C.T)
    scale = max(np.trace(C) / C.shape[0], float(np.mean(Z * Z)), np.finfo(float).tiny)
    values, vectors = np.linalg.eigh(C + ridge * scale * np.eye(C.shape[0]))
    values = np.maximum(values, ridge * scale)
    inv_root = (vectors / np.sqrt(values)) @ vectors.T
    root = (vectors * np.sqrt(values)) @ vectors.T
    T_white, T_other = (inv_root, root)
    W = (X if side == "query" else Y) @ T_white.T
    O = (Y if side == "query" else X) @ T_other.T
    w_sq, o_sq = float(np.mean(np.sum(W * W, axis=1))), float(np.mean(np.sum(O * O, axis=1)))
    s = (o_sq / w_sq) ** 0.25 if w_sq > 0 and o_sq > 0 else 1.0
    T_white, T_other = T_white * s, T_other / s
    return (T_white, T_other) if side == "query" else (T_other, T_white)


class WhitenedFeatureMap(FeatureMap):
    """Whitening of queries (or keys) with the logits kept, then an isotropic map.

    Parameters
    ----------
    side : {"query", "key"}, default="query"
        The side whose covariance is whitened; the other side gets the inverse
        transpose.
    base : {"optimal", "positive"}, default="optimal"
        The isotropic map after whitening (``"optimal"`` fits GERF's ``A*`` on the
        whitened pairs).
    name : str or None
        Registry name (default ``"whitened"``, or ``"whitened_<side>_<base>"`` for
        non-default options).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> rng = np.random.default_rng(0)
    >>> Q, K = rng.normal(size=(2, 100, 4)) * [[3.0, 1.0, 0.5, 0.1]]
    >>> fmap = get_feature_map("whitened")
    >>> c = fmap.fit(Q, K, input_scale=0.5)
    >>> q, k = fmap.prepare(Q, "query", c), fmap.prepare(K, "key", c)
    >>> bool(np.allclose(q @ k.T, Q @ K.T))
    True
    """

    kernels = ("softmax",)
    data_constants = ("query_transform", "key_transform", "A")
    constant_shapes = {"query_transform": ("d", "d"), "key_transform": ("d", "d"), "A": ()}
    summary = "whitened q (logits kept), then GERF: unbiased"

    def __init__(self, side="query", base="optimal", name=None, ridge=DEFAULT_RIDGE):
        if side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
        if base not in BASES:
            raise ValueError(f"base must be one of {list(BASES)}, got {base!r}")
        self.side, self.base, self.ridge = side, base, ridge
        default = "whitened" if (side, base) == ("query", "optimal") else f"whitened_{side}_{base}"
        self.name = default if name is None else name

    def fit(self, X, Y=None, *, input_scale=1.0):
        X = _dense(X, "X")
        Y = X if Y is None else _dense(Y, "Y")
        d = X.shape[1]
        if X.shape[0] == 0 or Y.shape[0] == 0:
            return {"query_transform": np.eye(d), "key_transform": np.eye(d), "A": 0.0}
        if Y is X:  # one input set: a whitening would change the kernel; keep the identity
            Tq = Tk = np.eye(d)
        else:
            with blas_single_thread():
                Tq, Tk = whitening_transform(X, Y, self.side, self.ridge)
        A = 0.0
        if self.base == "optimal":
            A = float(optimal_gerf_a(input_scale**2 * homogeneity_sum_sq(X @ Tq.T, Y @ Tk.T), d))
        return {"query_transform": Tq, "key_transform": Tk, "A": A}

    def prepare(self, X, side, constants):
        return linear_prepare(X, side, constants)

    def spec(
        self,
        projection,
        *,
        n_components,
        input_scale,
        kernel="softmax",
        constants=None,
        draws=None,
        sorf=None,
    ):
        A = 0.0 if constants is None else float(constants["A"])
        return optimal_positive_spec(projection, input_scale, A, 0.5, sorf=sorf)

    # GERF (isotropic w) on the prepared pair, which keeps q.k: the optimal map's closed
    # forms at the fitted A hold (FeatureMap.pair_geometry prepares the pairs first).
    log_mse = OptimalFeatureMap.log_mse
    closed_form_projections = OptimalFeatureMap.closed_form_projections

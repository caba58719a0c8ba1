"""Optimal positive random features (GERF / OPRF, the estimator behind FAVOR++).

``phi(x) = (1 - 4A)^{d/4} exp(A |w|^2 + sqrt(1 - 4A) w.x' - |x'|^2 / 2) / sqrt(m)``
is unbiased for ``exp(x'.y')`` for every ``A < 1/4`` (Likhosherstov et al., "Chefs'
Random Tables", NeurIPS 2022); ``A = 0`` is the positive map.  The data constant
``A`` minimizes the variance for a typical pair (:ref:`theory-favor-plus-plus`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._base import FeatureMap, sq_factor
from ._evaluate import FeatureMapSpec, max_sq_norm, sorf_projector
from ._variance import block_deficit, exp_map_log_mse, gerf_log_rel_var, log_expm1

__all__ = ["OptimalFeatureMap", "optimal_gerf_a", "homogeneity_sum_sq", "optimal_positive_spec"]


def optimal_gerf_a(sum_sq, n_dims):
    """Variance-minimizing GERF parameter ``A*`` for ``phi = |x + y|^2``.

    See :ref:`theory-favor-plus-plus`.

    ``A* = (d - 2 phi - sqrt((2 phi + d)^2 + 8 d phi)) / (16 d)``, in ``(-inf, 0]``,
    evaluated as ``-phi / (d - 2 phi + sqrt(...))`` (the same number, since
    ``(d - 2 phi)^2 - (2 phi + d)^2 - 8 d phi = -16 d phi``), which avoids the
    cancellation of the direct form when ``phi`` is small relative to ``d``.  The
    denominator is written ``2 d + 8 d phi / ((2 phi + d)(1 + sqrt(1 + e)))`` with
    ``e = 8 d phi / (2 phi + d)^2``: no cancellation and no overflow for large
    ``phi`` either (``A* -> -phi / (4 d)``).  ``phi`` beyond float64 (an overflowed
    mean) is taken as the largest float, so ``A*`` stays finite.

    Examples
    --------
    >>> from favorkern.feature_maps.optimal import optimal_gerf_a
    >>> float(optimal_gerf_a(0.0, 4))
    -0.0
    >>> bool(np.isfinite(optimal_gerf_a(np.inf, 4)))
    True
    """
    phi = np.minimum(np.asarray(sum_sq, dtype=np.float64), np.finfo(np.float64).max)
    d = float(n_dims)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(phi > 0, d / phi, np.inf)  # d / phi, inf at phi = 0
        inv = 1.0 / (2.0 + ratio)  # phi / (2 phi + d)
        e = 8.0 * d / (2.0 * phi + d) * inv
        denominator = 2.0 * d + 8.0 * d * inv / (1.0 + np.sqrt(1.0 + e))
    return -phi / denominator


def homogeneity_sum_sq(X, Y=None):
    """Mean of ``|x_i + y_j|^2`` over all pairs, in O(L d) (the OPRF homogeneity heuristic)."""
    X = np.asarray(X, dtype=np.float64)
    Y = X if Y is None else np.asarray(Y, dtype=np.float64)
    mean_sq = np.mean(np.einsum("ij,ij->i", X, X)) + np.mean(np.einsum("ij,ij->i", Y, Y))
    return float(mean_sq + 2.0 * X.mean(axis=0) @ Y.mean(axis=0))


def optimal_positive_spec(projection, input_scale, a, sq_factor=0.5, sorf=None) -> FeatureMapSpec:
    """GERF / OPRF: ``(1-4A)^{d/4} exp(A|w|^2 + sqrt(1-4A) w.x' - sq_factor |x'|^2) / sqrt(m)``.

    ``A = 0`` is :func:`positive_spec`.  The ``A |w|^2`` and ``(d/4) log(1 - 4A)`` terms
    enter the exponent (never the prefactor, which overflows for large ``d``).
    """
    m, d = projection.shape
    b = np.sqrt(1.0 - 4.0 * a)
    sq_norms = np.einsum("ij,ij->i", projection, projection)
    with np.errstate(over="ignore"):  # A* of an overflowed |x|^2: -inf scales, inf bound
        log_scale = a * sq_norms + 0.25 * d * np.log1p(-4.0 * a) - 0.5 * np.log(m)
        bound = (b**2) * max_sq_norm(projection) / (4 * sq_factor)
    return FeatureMapSpec(
        projection * (b * input_scale),
        "exp",
        sq_coef=sq_factor * input_scale**2,
        log_scale=log_scale,
        logit_bound=bound,
        projector=sorf_projector(sorf, b * input_scale),
    )


def mean_sum_sq(X, Y=None) -> float:
    """Mean ``|x + y|^2`` over all pairs of rows, for dense or sparse ``X`` (``Y=None``: X)."""
    if sp.issparse(X) and Y is None:
        mean = np.asarray(X.mean(axis=0)).ravel()
        mean_sq = float(X.multiply(X).sum(axis=1).mean())
        return 2.0 * (mean_sq + mean @ mean)
    return homogeneity_sum_sq(X, Y)


def _scaled_mean_sum_sq(X, Y=None) -> float:
    """:func:`mean_sum_sq` computed on ``X / s`` (``s`` the largest magnitude) then times
    ``s^2``: squares of huge entries do not overflow on the way (the result may, as inf)."""
    scale = _max_abs(X) if Y is None else max(_max_abs(X), _max_abs(Y))
    if not scale > 0 or scale < 1e100:
        return mean_sum_sq(X, Y)
    return mean_sum_sq(X / scale, None if Y is None else Y / scale) * scale * scale


def _max_abs(X) -> float:
    if sp.issparse(X):
        return float(abs(X).max()) if X.nnz else 0.0
    return float(np.max(np.abs(X))) if np.size(X) else 0.0


class OptimalFeatureMap(FeatureMap):
    """GERF features with the variance-minimizing ``A*`` fitted on data (FAVOR++).

    ``fit`` takes the homogeneity heuristic: ``|x' + y'|^2`` replaced by its mean over
    all pairs of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import get_feature_map
    >>> X = np.random.default_rng(0).normal(scale=0.5, size=(20, 16))
    >>> round(get_feature_map("optimal").fit(X)["A"], 3)
    -0.191
    """

    name = "optimal"
    data_constants = ("A",)
    constant_shapes = {"A": ()}
    summary = "GERF with the fitted A*: FAVOR++, non-negative, unbiased"

    def fit(self, X, Y=None, *, input_scale=1.0):
        if Y is not None and Y.shape[0] == 0:
            return {"A": 0.0}
        with np.errstate(over="ignore", invalid="ignore"):
            sum_sq = _scaled_mean_sum_sq(X, Y) * input_scale**2
        return {"A": float(optimal_gerf_a(sum_sq, X.shape[1]))}

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
        return optimal_positive_spec(projection, input_scale, A, sq_factor(kernel), sorf=sorf)

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        s = geometry.s
        A = (
            optimal_gerf_a(s, d)
            if constants is None or constants.get("A") is None
            else constants["A"]
        )
        deficit = block_deficit(s, d, projection) if P else np.zeros_like(s)
        # Var1 / SM^2 = e^t - 1; the same-block Cov does not depend on A
        # (:ref:`theory-orthogonal-exact`).
        log_var = log_expm1(np.maximum(gerf_log_rel_var(s, d, A), 0.0))
        return exp_map_log_mse(geometry, log_var, deficit, m, P)

    def closed_form_projections(self, norms):
        return ("gaussian", "orthogonal", "simplex") if norms == "chi" else ()

"""Second-order Taylor features: ``exp(x'.y') ~ 1 + x'.y' + (x'.y')^2 / 2``.

The deterministic map of Based (Arora et al., "Simple linear attention language
models balance the recall-throughput tradeoff", 2024):

    phi(x) = [1, x', (x'_i x'_j)_{i<j}, (x'_i^2 / sqrt(2))_i],

width ``1 + d + d(d+1)/2`` (each symmetric product once, the off-diagonal ones
carrying the factor 2 of ``(x.y)^2 = sum_i x_i^2 y_i^2 + 2 sum_{i<j} x_i x_j y_i y_j``
in their square root).  ``phi(x).phi(y) = 1 + s + s^2 / 2`` with ``s = x'.y'``
exactly; it is never negative (the quadratic has no real root), so attention's
normalizer stays positive although single features can be negative.  Not an
unbiased estimator: its error is the truncation ``r(s) = e^s - 1 - s - s^2/2``,
the same for every draw, and its ``theoretical_mse`` is ``r(s)^2`` (the squared
bias; no variance).
"""

from __future__ import annotations

import numpy as np

from ._base import FeatureMap
from ._evaluate import FeatureMapSpec

__all__ = ["TaylorFeatureMap", "taylor_width", "taylor_log_abs_remainder"]


def taylor_width(n_dims: int) -> int:
    """Output width ``1 + d + d(d+1)/2`` of the second-order Taylor map.

    Examples
    --------
    >>> from favorkern.feature_maps.taylor import taylor_width
    >>> taylor_width(16), taylor_width(64)
    (153, 2145)
    """
    d = int(n_dims)
    return 1 + d + d * (d + 1) // 2


class _TaylorFeatures:
    """The features from the columns ``1..d`` of the projection (which hold ``x'``).

    A shape-keeping callable for :class:`~favorkern.feature_maps.FeatureMapSpec`:
    the spec's rows ``1..d`` are ``input_scale * I``, the others zero, so the
    evaluator's product writes ``x'`` where the linear terms go; this writes the rest.
    """

    def __init__(self, n_dims):
        d = int(n_dims)
        i, j = np.triu_indices(d)
        self.d = d
        self.left, self.right = i + 1, j + 1
        self.coef = np.where(i == j, np.sqrt(0.5), 1.0)

    def __call__(self, u):
        d = self.d
        out = np.zeros_like(u)
        out[:, 0] = 1.0
        out[:, 1 : d + 1] = u[:, 1 : d + 1]
        products = u[:, self.left]
        products *= u[:, self.right]
        products *= self.coef.astype(u.dtype, copy=False)
        out[:, d + 1 : d + 1 + products.shape[1]] = products
        return out


def taylor_log_abs_remainder(s):
    """``log |e^s - 1 - s - s^2/2|`` without cancellation (``-inf`` at ``s = 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.taylor import taylor_log_abs_remainder
    >>> s = np.array([1e-3, 2.0, -3.0])
    >>> exact = np.abs(np.exp(s) - 1 - s - s**2 / 2)
    >>> bool(np.allclose(np.exp(taylor_log_abs_remainder(s))[1:], exact[1:], rtol=1e-12))
    True
    >>> float(np.exp(taylor_log_abs_remainder(1e-3)) / (1e-9 / 6))   # s^3/6 leads
    1.00025...
    """
    s = np.asarray(s, dtype=np.float64)
    out = np.empty_like(s)
    small = np.abs(s) < 1.0
    # |s| < 1: the series s^3/6 (1 + s/4 + s^2/20 + ...), 30 terms below 1e-30 relative
    ss = s[small]
    term = ss**3 / 6.0
    total = term.copy()
    for k in range(4, 34):
        term = term * ss / k
        total += term
    with np.errstate(divide="ignore"):
        out[small] = np.log(np.abs(total))
    high = s >= 1.0
    sh = s[high]
    # e^s (1 - (1 + s + s^2/2) e^-s): finite for any s, the factor in (0, 0.92]
    out[high] = sh + np.log1p(-(1.0 + sh + 0.5 * sh * sh) * np.exp(-sh))
    low = s <= -1.0
    sl = s[low]
    out[low] = np.log(1.0 + sl + 0.5 * sl * sl - np.exp(sl))  # positive for s <= -1
    return out


class TaylorFeatureMap(FeatureMap):
    """Second-order Taylor features of ``exp(gamma x.y)`` (Based), deterministic.

    ``phi(x) = [1, x', (x'_i x'_j)_{i<j}, x'_i^2 / sqrt(2)]`` with ``x' = sqrt(gamma) x``:
    ``phi(x).phi(y) = 1 + s + s^2/2`` for ``s = gamma x.y``, the exponential's
    series truncated after the square (Arora et al., 2024).  ``n_components`` must
    be at least the width ``1 + d + d(d+1)/2`` (:func:`taylor_width`); columns
    beyond it are zero.  The projection is not used (one row is drawn, for the
    shared interface).  Its error is the truncation, the same for every draw:
    :func:`favorkern.diagnostics.theoretical_mse` gives its square (the squared bias),
    small where ``|s| < 1`` and growing as ``e^{2s}`` beyond.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import RandomFeatures
    >>> X = np.random.default_rng(0).normal(scale=0.3, size=(4, 3))
    >>> Z = RandomFeatures("taylor", n_components=10).fit_transform(X)
    >>> s = X @ X.T
    >>> bool(np.allclose(Z @ Z.T, 1 + s + s**2 / 2, rtol=1e-12))
    True
    """

    name = "taylor"
    kernels = ("softmax",)
    nonnegative = False
    deterministic = True
    summary = "[1, x, x x / sqrt 2]: 2nd-order Taylor of exp (Based), deterministic, biased"

    def n_projections(self, n_components: int) -> int:
        return 1

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
        d = projection.shape[1]
        width = taylor_width(d)
        n_components = int(n_components)
        if n_components < width:
            raise ValueError(
                f"n_components must be at least 1 + d + d(d+1)/2 = {width} for feature map "
                f"'taylor' with {d}-dimensional inputs (its series terms), got {n_components}"
            )
        weights = np.zeros((n_components, d))
        weights[1 : d + 1] = input_scale * np.eye(d)
        return FeatureMapSpec(weights, _TaylorFeatures(d))

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        # Deterministic: the MSE is the squared truncation error, whatever the draw.
        return 2.0 * taylor_log_abs_remainder(geometry.ip)

    def closed_form_projections(self, norms):
        return ("gaussian", "orthogonal", "simplex")

"""Hybrid random features (HRF): positive and trigonometric estimators mixed by angle.

Choromanski et al., "Hybrid Random Features", ICLR 2022.  Two base estimators of
``SM(x, y) = exp(x'.y')``, each unbiased: positive features ``A`` (FAVOR+, exact
at ``y' = -x'``) and trigonometric ones ``B`` (exact at ``y' = x'``), mixed with
data-dependent weights that are themselves estimated by random features,

    K(x, y) = lambda^(x, y) A(x, y) + (1 - lambda^(x, y)) B(x, y),

with ``lambda^`` independent of ``A`` and ``B`` and ``E lambda^ = lambda``, so
``E K = SM``.  Two weights (the paper's angular and Gaussian-lambda HRFs):

* ``"angular"``: ``lambda = theta / pi`` (``theta`` the angle of ``x`` and ``y``),
  estimated by ``n`` sign features, ``lambda^ = 1/2 - (1/2n) sum_i sign(v_i.x)
  sign(v_i.y)``, ``E sign(v.x) sign(v.y) = 1 - 2 theta / pi`` (Charikar, 2002).
  It is exactly 0 at ``theta = 0`` and exactly 1 at ``theta = pi``: there the
  estimator is the exact base estimator alone, with zero variance.
* ``"gaussian"``: the weight of ``B`` is ``lambda = exp(-sigma^2 |x' - y'|^2 / 2)``,
  estimated by ``n`` random Fourier pairs ``(1/n) sum_i cos(v_i.(x' - y'))``,
  ``v_i ~ N(0, sigma^2 I)``; exactly 1 at ``x' = y'``.

Because ``lambda^`` has a constant part and a product part of opposite sign
(``1/2 - ...``), the features are *asymmetric*: query and key features differ in
the sign of the blocks with a negative coefficient, and no one set of features
serves both (the weight ``theta / pi`` vanishes on the diagonal, so it is no
positive-definite kernel).  With independent ``lambda^``, ``A`` and ``B`` the MSE is

    MSE = (w_A^2 + V) Var(A) + (w_B^2 + V) Var(B),

``w_A``, ``w_B = 1 - w_A`` the weights of ``A`` and ``B``, ``V = Var(lambda^)``:
``lambda (1 - lambda) / n`` (angular), ``(1 - lambda^2)^2 / (2n)`` (Gaussian), and
``Var(A)``, ``Var(B)`` the closed forms of the positive and trigonometric maps.
"""

from __future__ import annotations

import numpy as np

from ._base import FeatureMap
from ._evaluate import FeatureMapSpec

__all__ = ["HybridFeatureMap", "hrf_layout", "hrf_mse", "hrf_log_mse"]

LAMBDA_KINDS = ("angular", "gaussian")


def hrf_layout(n_components, lambda_kind="angular", n_lambda=3):
    """``(m, k, width)``: base width ``m``, lambda features ``k``, used output width.

    The positive estimator has ``m`` features, the trigonometric one ``m / 2``
    cos/sin pairs (``m`` outputs), the weight ``k`` features per side (``n``
    signs, or ``n`` cos/sin pairs).  The output is ``(1 + k) m`` columns for the
    positive blocks plus ``(c + k) m`` for the trigonometric ones (``c = 1``
    angular, 0 Gaussian, whose trigonometric weight has no constant part);
    ``m`` is the largest even number that fits ``n_components``; the columns beyond
    ``width`` are zero.

    Examples
    --------
    >>> from favorkern.feature_maps.hrf import hrf_layout
    >>> hrf_layout(256)
    (32, 3, 256)
    >>> hrf_layout(256, "gaussian", 1)
    (50, 2, 250)
    """
    k = n_lambda if lambda_kind == "angular" else 2 * n_lambda
    per = 1 + k + (1 if lambda_kind == "angular" else 0) + k
    m = (int(n_components) // per) // 2 * 2
    return m, k, per * m


def _coefficients(lambda_kind, n):
    """``(alpha, beta)`` of the positive and the trigonometric blocks: their weights are
    ``alpha + beta L(x).L(y)`` with ``L`` the lambda features."""
    if lambda_kind == "angular":
        return (0.5, -0.5 / n), (0.5, 0.5 / n)
    return (1.0, -1.0 / n), (0.0, 1.0 / n)


def _hrf_features(sq, flag, u_pos, u_trig, u_lam, *, lambda_kind, n_lambda, n_out):
    """HRF features from the projections (rows ``(n_samples, .)``), in ``u_pos``'s dtype.

    ``sq = |x'|^2``; ``flag`` is +1 for queries and -1 for keys (the sign of the
    blocks with a negative coefficient); ``u_pos = W_A x'``, ``u_trig = W_B x'``
    (``m/2`` rows), ``u_lam`` the weight's projections (``v.x``, or ``v.x'`` with
    ``v ~ N(0, sigma^2 I)``).  Columns: ``[sqrt(alpha_A) phi_A, sqrt|beta_A| L x phi_A,
    sqrt(alpha_B) phi_B, sqrt|beta_B| L x phi_B, 0...]``.
    """
    dtype = u_pos.dtype
    rows, m = u_pos.shape
    half = u_trig.shape[1]
    phi_a = np.exp(u_pos - (sq / 2)[:, None] - 0.5 * np.log(m))
    h = np.exp(sq / 2 - 0.5 * np.log(half))[:, None]
    phi_b = np.concatenate([np.cos(u_trig) * h, np.sin(u_trig) * h], axis=1)
    if lambda_kind == "angular":
        lam = np.where(u_lam >= 0, 1.0, -1.0).astype(dtype)
    else:
        lam = np.concatenate([np.cos(u_lam), np.sin(u_lam)], axis=1)
    out = np.zeros((rows, n_out), dtype=dtype)
    col = 0
    for phi, (alpha, beta) in zip((phi_a, phi_b), _coefficients(lambda_kind, n_lambda),
                                  strict=True):  # fmt: skip
        width = phi.shape[1]
        if alpha:
            out[:, col : col + width] = np.sqrt(alpha) * phi
            col += width
        sign = flag[:, None] if beta < 0 else 1.0
        block = (lam[:, :, None] * phi[:, None, :]).reshape(rows, -1)
        out[:, col : col + block.shape[1]] = np.sqrt(abs(beta)) * sign * block
        col += block.shape[1]
    return out


class _HrfFunction:
    """The spec's callable: reads ``[x', flag, W_A x', W_B x', V x]`` from the product."""

    def __init__(self, d, m, half, n, lambda_kind, n_out):
        self.d, self.m, self.half, self.n = d, m, half, n
        self.lambda_kind, self.n_out = lambda_kind, n_out

    def __call__(self, u):
        d, m, half = self.d, self.m, self.half
        x = u[:, :d]
        sq = np.einsum("ij,ij->i", x, x)
        flag = u[:, d]
        start = d + 1
        out = _hrf_features(
            sq, flag, u[:, start : start + m], u[:, start + m : start + m + half],
            u[:, start + m + half : start + m + half + self.n],
            lambda_kind=self.lambda_kind, n_lambda=self.n, n_out=self.n_out,
        )  # fmt: skip
        _warn_large(out)
        return out


# Features beyond this fraction of the dtype's range (2^56 in float32) make the
# products and sums of attention overflow; exp(|x'|^2 / 2) gets there at |x'|^2 ~ 78.
_LARGE_EXPONENT = 0.44


def _warn_large(out):
    """Warn when features are so large that their products can overflow the dtype."""
    if not out.size:
        return
    info = np.finfo(out.dtype)
    peak = float(np.nanmax(np.abs(out)))
    if peak > info.max**_LARGE_EXPONENT:
        import warnings

        from ._evaluate import FeatureOverflowWarning

        warnings.warn(
            f"hybrid random features reach {peak:.3g} in {out.dtype.name}: their products "
            "(attention's sums of phi(q).phi(k)) may overflow, since the trigonometric "
            "part grows as exp(|x'|^2 / 2); use float64 input, lower gamma or scale the "
            "inputs down",
            FeatureOverflowWarning,
            stacklevel=3,
        )


class HybridFeatureMap(FeatureMap):
    """Hybrid random features (Choromanski et al., ICLR 2022), angular or Gaussian weights.

    Asymmetric: :meth:`prepare` appends a side column (+1 queries, -1 keys) that
    the features read, so they work where queries and keys are prepared apart
    (:func:`favorkern.favor_attention`, bidirectional and causal, and the
    diagnostics); a transformer of one input set cannot use them.  The projection
    holds ``m`` rows for the positive estimator, then ``m / 2`` for the
    trigonometric one, then ``n_lambda`` for the weight (:func:`hrf_layout`).  The
    estimator is unbiased when the weight's rows are independent of the others:
    exactly for ``projection="gaussian"``; orthogonal blocks and quasi-Monte Carlo
    sets make them dependent (measure with :func:`favorkern.diagnostics.empirical_mse`).

    Parameters
    ----------
    lambda_kind : {"angular", "gaussian"}, default="angular"
    n_lambda : int, default=3
        Sign features (angular) or cos/sin pairs (Gaussian) of the weight.
    sigma : float, default=1.0
        Gaussian weight ``exp(-sigma^2 |x' - y'|^2 / 2)``.
    name : str or None
        Registry name (default ``"hrf"`` or ``"hrf_gaussian"``).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern import favor_attention, softmax_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.normal(scale=0.5, size=(3, 16, 4))
    >>> out = favor_attention(Q, K, V, feature_map="hrf", n_components=1024,
    ...                       projection="gaussian", random_state=0)
    >>> bool(np.abs(out - softmax_attention(Q, K, V)).mean() < 0.1)
    True
    """

    kernels = ("softmax",)
    nonnegative = False
    summary = "hybrid random features: positive and trigonometric mixed by angle (HRF)"
    # trials cannot be stacked into one projection (the layout has three parts)
    stacked_trials = False

    def __init__(self, lambda_kind="angular", n_lambda=3, sigma=1.0, name=None):
        if lambda_kind not in LAMBDA_KINDS:
            raise ValueError(
                f"lambda_kind must be one of {list(LAMBDA_KINDS)}, got {lambda_kind!r}"
            )
        integral = isinstance(n_lambda, (int, np.integer)) and not isinstance(n_lambda, bool)
        if not integral or n_lambda < 1:
            raise ValueError(f"n_lambda must be a positive int, got {n_lambda!r}")
        if not (isinstance(sigma, (int, float, np.floating)) and np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.lambda_kind = lambda_kind
        self.n_lambda = int(n_lambda)
        self.sigma = float(sigma)
        self.name = name or ("hrf" if lambda_kind == "angular" else "hrf_gaussian")

    def layout(self, n_components):
        """:func:`hrf_layout` of this map, with the width checked."""
        m, k, width = hrf_layout(n_components, self.lambda_kind, self.n_lambda)
        if m < 2:
            per = width // m if m else (2 + 2 * k if self.lambda_kind == "angular" else 1 + 2 * k)
            raise ValueError(
                f"n_components must be at least {2 * per} for feature map {self.name!r} "
                f"(two base features per block), got {n_components}"
            )
        return m, k, width

    def n_projections(self, n_components: int) -> int:
        m, _, _ = hrf_layout(max(int(n_components), 0), self.lambda_kind, self.n_lambda)
        return max(m, 2) + max(m, 2) // 2 + self.n_lambda

    def fit(self, X, Y=None, *, input_scale=1.0):
        if Y is None:
            raise ValueError(
                f"feature map {self.name!r} gives queries and keys different features (its "
                "weight estimate is asymmetric), so one set of features cannot estimate the "
                "kernel: use favorkern.favor_attention, or the map's prepare() with 'query' "
                "and 'key'"
            )
        return {}

    def prepare(self, X, side, constants=None):
        flag = 1.0 if side == "query" else -1.0
        out = np.empty(X.shape[:-1] + (X.shape[-1] + 1,), dtype=X.dtype)
        out[..., :-1] = X
        out[..., -1] = flag
        return out

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
        m, k, _ = self.layout(n_components)
        d = projection.shape[1]
        half, n = m // 2, self.n_lambda
        if projection.shape[0] != m + half + n:
            raise ValueError(
                f"feature map {self.name!r} at n_components={n_components} needs "
                f"{m + half + n} projection rows, got {projection.shape[0]}"
            )
        n_out = int(n_components)
        if d + 1 + m + half + n > n_out:
            raise ValueError(
                f"n_components={n_out} is too small for feature map {self.name!r} with "
                f"{d}-dimensional inputs: it needs at least {d + 1 + m + half + n} columns"
            )
        weights = np.zeros((n_out, d + 1))
        weights[:d, :d] = input_scale * np.eye(d)
        weights[d, d] = 1.0
        start = d + 1
        weights[start : start + m + half, :d] = projection[: m + half] * input_scale
        lam = projection[m + half :]
        if self.lambda_kind == "gaussian":
            lam = lam * (self.sigma * input_scale)
        weights[start + m + half : start + m + half + n, :d] = lam
        func = _HrfFunction(d, m, half, n, self.lambda_kind, n_out)
        return FeatureMapSpec(weights, func)

    def pair_geometry(self, x, y, gamma, constants):
        from ._variance import PairGeometry

        return PairGeometry.of(x, y, gamma)

    def log_mse(self, geometry, *, m, P, d, projection, norms, constants):
        # m is the output width (one output per "projection" in the diagnostics' terms)
        self.layout(m)
        return hrf_log_mse(geometry, n_components=m, lambda_kind=self.lambda_kind,
                           n_lambda=self.n_lambda, sigma=self.sigma)  # fmt: skip

    def closed_form_projections(self, norms):
        return ("gaussian",) if norms == "chi" else ()


def hrf_log_mse(geometry, *, n_components, lambda_kind="angular", n_lambda=3, sigma=1.0):
    """``log`` of the closed-form MSE (iid rows) from a pair geometry (scaled pairs).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import PairGeometry
    >>> from favorkern.feature_maps.hrf import hrf_log_mse, hrf_mse
    >>> x, y = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    >>> g = PairGeometry.of(x, y, 1.0)
    >>> bool(np.isclose(np.exp(hrf_log_mse(g, n_components=64))[0],
    ...                 hrf_mse(x, y, n_components=64)[0]))
    True
    """
    from ._variance import log_expm1

    a, b, ip, s, delta = geometry.a, geometry.b, geometry.ip, geometry.s, geometry.delta
    m, _, _ = hrf_layout(n_components, lambda_kind, n_lambda)
    half = m // 2
    # positive: SM^2 (e^|z|^2 - 1) / m; trigonometric: e^(a+b) (1 - e^-delta)^2 / 2 per pair
    with np.errstate(divide="ignore"):
        log_a = 2.0 * ip + log_expm1(s) - np.log(m)
        log_b = (a + b) + 2.0 * np.log(-np.expm1(-delta)) - np.log(2.0 * half)
    if lambda_kind == "angular":
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = np.clip(ip / np.sqrt(a * b), -1.0, 1.0)
        cosine = np.where(np.isfinite(cosine), cosine, 1.0)
        w_a = np.arccos(cosine) / np.pi
        variance = w_a * (1.0 - w_a) / n_lambda
    else:
        lam = np.exp(-0.5 * sigma**2 * delta)  # weight of the trigonometric estimator
        w_a = 1.0 - lam
        variance = (1.0 - lam**2) ** 2 / (2.0 * n_lambda)
    with np.errstate(divide="ignore"):
        ca = np.log(w_a**2 + variance)
        cb = np.log((1.0 - w_a) ** 2 + variance)
    return np.logaddexp(ca + log_a, cb + log_b)


def hrf_mse(x, y, *, n_components, gamma=1.0, lambda_kind="angular", n_lambda=3, sigma=1.0):
    """Closed-form MSE of hybrid random features (iid rows) of the pairs ``(x, y)``.

    ``(w_A^2 + V) Var(A) + (w_B^2 + V) Var(B)`` with the positive and trigonometric
    variances at ``m`` features each (:func:`hrf_layout`), see the module docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps.hrf import hrf_mse
    >>> x = np.array([[0.6, 0.8]])
    >>> float(hrf_mse(x, x, n_components=64)[0])       # theta = 0: trigonometric, exact
    0.0
    >>> float(hrf_mse(x, -x, n_components=64)[0])      # theta = pi: positive, exact
    0.0
    """
    from ._variance import PairGeometry

    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    x, y = np.broadcast_arrays(x, y)
    geometry = PairGeometry.of(x, y, gamma)
    with np.errstate(under="ignore"):
        return np.exp(hrf_log_mse(geometry, n_components=n_components, lambda_kind=lambda_kind,
                                  n_lambda=n_lambda, sigma=sigma))  # fmt: skip

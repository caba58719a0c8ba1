"""Variance and convergence diagnostics of the random-feature estimators.

Closed-form mean squared errors (Performer, Lemma 2; the exact orthogonal-block
formula and the regularized kernel of THEORY.md sections 3.3 and 4) next to
Monte-Carlo estimates that run the library's own feature maps.

Conventions used throughout this module
---------------------------------------
* ``n_features`` is the number ``m`` of random **projections** (THEORY.md's ``m``),
  not the output width: positive features give ``m`` outputs, hyperbolic and
  trigonometric features ``2 m`` (their transformers' ``n_components = 2 m``).
* The target is the softmax kernel ``SM(x, y) = exp(gamma x.y)``; ``gamma`` enters
  as ``x -> sqrt(gamma) x``, so every formula below is written for ``gamma = 1``
  with ``x' = sqrt(gamma) x``.
* ``z = x' + y'``, ``delta = x' - y'``, ``Lambda = exp(-(|x'|^2 + |y'|^2) / 2)``.

Only numpy and scipy are imported here; pandas is imported inside the functions
that return data frames, the attention functions inside :func:`attention_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from ._feature_maps import optimal_gerf_a
from ._validation import check_float_array, check_int, check_option, check_positive_real

__all__ = [
    "FEATURES",
    "ALL_FEATURES",
    "MonteCarloMSE",
    "theoretical_mse",
    "empirical_mse",
    "default_pairs",
    "variance_study",
    "convergence",
    "attention_error",
]

# The Performer's three estimators; ALL_FEATURES adds GERF/OPRF ("optimal", FAVOR++).
FEATURES = ("positive", "hyperbolic", "trigonometric")
ALL_FEATURES = FEATURES + ("optimal",)
_PROJECTIONS = ("gaussian", "orthogonal", "simplex")
# Monte Carlo also draws structured (SORF) projections, which have no closed form.
_MC_PROJECTIONS = _PROJECTIONS + ("structured",)
# Gauss-Laguerre nodes for the simplex covariance (a 2-D expectation over chi norms).
_SIMPLEX_NODES = 96
_NORMS = ("chi", "fixed")

# Poisson windows: mean +- (12 sqrt(mean) + 40) holds all but ~e^-70 of the mass.
_WINDOW_SIGMAS = 12.0
_WINDOW_PAD = 40
# Beyond this Poisson mean the window would be large and the orthogonal correction is
# negligible against the iid term (it is bounded by one unit of it); the mean is clipped.
_MAX_POISSON_MEAN = 1.0e6
# Elements per temporary array in the windowed sums and in the Monte Carlo.
_CHUNK_ELEMENTS = 1 << 22
# Elements per chunk of Monte-Carlo trials (features plus stacked weights), cache-friendly.
_MC_CHUNK_ELEMENTS = 1 << 20


# -- input handling ----------------------------------------------------------------


def _check_pairs(x, y):
    """Validate ``x``, ``y`` as float64 ``(n, d)`` arrays; return them and a scalar flag."""
    x = check_float_array(x, "x", dtype=np.float64)
    y = check_float_array(y, "y", dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be a 1-D or 2-D array, got shape {x.shape}")
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be a 1-D or 2-D array, got shape {y.shape}")
    scalar = x.ndim == 1 and y.ndim == 1
    x2, y2 = np.atleast_2d(x), np.atleast_2d(y)
    if x2.shape[1] != y2.shape[1]:
        raise ValueError(
            f"x and y must have the same number of dimensions, got {x2.shape[1]} and {y2.shape[1]}"
        )
    try:
        x2, y2 = np.broadcast_arrays(x2, y2)
    except ValueError:
        raise ValueError(
            f"x and y must hold the same number of pairs (or one of them 1), "
            f"got shapes {x.shape} and {y.shape}"
        ) from None
    return np.ascontiguousarray(x2), np.ascontiguousarray(y2), scalar


def _check_gamma(gamma):
    return check_positive_real(gamma, "gamma")


def _check_a(A):
    """GERF parameter: None (per-pair optimum) or a real < 1/8."""
    if A is None:
        return None
    if isinstance(A, bool) or not isinstance(A, (int, float, np.integer, np.floating)):
        raise TypeError(f"A must be a real number or None, got {type(A).__name__}: {A!r}")
    A = float(A)
    if not np.isfinite(A) or A >= 0.125:
        raise ValueError(f"A must be a finite number < 1/8 (finite variance), got {A}")
    return A


def _same_block_pairs(m: int, d: int, projection: str) -> int:
    """``P = k d (d - 1) + r (r - 1)`` ordered same-block pairs for ``m = k d + r``; 0 iid."""
    if projection == "gaussian":
        return 0
    if projection == "simplex" and d == 1:  # draw_projection's simplex is orthogonal there
        return 0
    k, r = divmod(m, d)
    return k * d * (d - 1) + r * (r - 1)


def _output(values, scalar):
    return float(values[0]) if scalar else values


# -- series -------------------------------------------------------------------------


def _log_one_minus_r(n_max: int, d: int) -> np.ndarray:
    """``log(1 - r_n)``, ``r_n = (d)_n / ((d/2)_n 2^n) = prod_{k<n} (d + k) / (d + 2k)``."""
    k = np.arange(n_max, dtype=np.float64)
    log_r = np.concatenate([[0.0], np.cumsum(np.log1p(-k / (d + 2.0 * k)))])
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(log_r))


def _log_abs_t(n_max: int, d: int):
    """``t_n = (-d/2)_n / (d/2)_n``: returns ``(log|t_n|, sign t_n)`` for ``n <= n_max``."""
    k = np.arange(n_max, dtype=np.float64)
    factors = (k - d / 2.0) / (k + d / 2.0)
    with np.errstate(divide="ignore"):
        log_abs = np.concatenate([[0.0], np.cumsum(np.log(np.abs(factors)))])
    sign = np.concatenate([[1.0], np.cumprod(np.sign(factors))])
    return log_abs, sign


def _poisson_expectation(lam, log_abs_g, sign_g=None):
    """``E[g(N)]``, ``N ~ Poisson(lam)``, summed over a window around ``lam``.

    ``|g| <= 1`` is assumed, so the omitted tails contribute at most ~e^-70.
    ``log_abs_g`` (and ``sign_g``) are tabulated for ``n = 0 .. len - 1``.
    """
    lam = np.minimum(np.asarray(lam, dtype=np.float64), _MAX_POISSON_MEAN)
    half = np.ceil(_WINDOW_SIGMAS * np.sqrt(lam)) + _WINDOW_PAD
    start = np.maximum(0.0, np.floor(lam - half)).astype(np.int64)
    width = int(2 * half.max()) + 1 if lam.size else 1
    out = np.empty(lam.shape, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // width)
    offsets = np.arange(width)
    for lo in range(0, lam.size, step):
        hi = min(lam.size, lo + step)
        n = start[lo:hi, None] + offsets[None, :]
        lam_c = lam[lo:hi, None]
        log_pmf = special.xlogy(n, lam_c) - lam_c - special.gammaln(n + 1.0)
        terms = np.exp(log_pmf + log_abs_g[n])
        if sign_g is not None:
            terms *= sign_g[n]
        out[lo:hi] = terms.sum(axis=1)
    return out


def _table_length(lam) -> int:
    lam = np.minimum(np.asarray(lam, dtype=np.float64), _MAX_POISSON_MEAN)
    top = lam.max() if lam.size else 0.0
    return int(top + 2 * (_WINDOW_SIGMAS * np.sqrt(top) + _WINDOW_PAD)) + 4


def _orthogonal_deficit(s, d):
    """``q(s) = 1 - e^{-s} M(d, d/2, s/2) = E[1 - r_N]``, ``N ~ Poisson(s)``.

    The positive/hyperbolic same-block covariance is ``Cov = -SM^2 q(s)``
    (THEORY.md 3.3: ``Lambda^2 [M(d, d/2, |z|^2/2) - e^{|z|^2}]``).  All terms are
    positive, so the sum has no cancellation; ``0 <= q < 1``.
    """
    return _poisson_expectation(s, _log_one_minus_r(_table_length(s), d))


def _trig_gap(delta, d):
    """``M(d, d/2, -delta/2) - e^{-delta}`` (the trigonometric same-block covariance factor).

    Small ``delta``: ``-sum_{n>=2} (-delta)^n / n! (1 - r_n)`` (fast, no cancellation).
    Otherwise Kummer's transformation, ``M(d, d/2, -v) = e^{-v} M(-d/2, d/2, v)
    = E[t_N]`` with ``N ~ Poisson(v)`` and ``|t_n| <= 1``: absolute error ~1e-16.
    """
    delta = np.asarray(delta, dtype=np.float64)
    out = np.empty_like(delta)
    small = delta < 0.5
    if small.any():
        n = np.arange(2, 40)
        coef = -np.exp(-special.gammaln(n + 1.0) + _log_one_minus_r(40, d)[2:40])
        out[small] = (coef * (-delta[small, None]) ** n).sum(axis=1)
    large = ~small
    if large.any():
        v = delta[large] / 2.0
        log_abs, sign = _log_abs_t(_table_length(v), d)
        out[large] = _poisson_expectation(v, log_abs, sign) - np.exp(-delta[large])
    return out


def _log_hyp0f1(b, u):
    """``log 0F1(; b; u)`` for ``u >= 0``, finite far beyond float64's range of the value."""
    u = np.asarray(u, dtype=np.float64)
    out = np.zeros_like(u)
    direct = u <= 500.0
    out[direct] = np.log(special.hyp0f1(b, u[direct]))
    big = ~direct
    if big.any():
        # 0F1(; b; u) = Gamma(b) u^{(1-b)/2} I_{b-1}(2 sqrt(u)); ive = I e^{-x}.
        root = 2.0 * np.sqrt(u[big])
        out[big] = (
            special.gammaln(b)
            + 0.5 * (1.0 - b) * np.log(u[big])
            + np.log(special.ive(b - 1.0, root))
            + root
        )
    return out


def _log_expm1(t):
    """``log(e^t - 1)`` for ``t >= 0`` (``-inf`` at 0), finite for any finite ``t``."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(
            t <= 30.0,
            np.log(np.expm1(np.minimum(t, 30.0))),
            t + np.log1p(-np.exp(-np.maximum(t, 30.0))),
        )


def _log_of_nonneg(value):
    """log of a quantity that is >= 0 mathematically; rounding below 0 gives -inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(value, 0.0))


# -- closed forms -------------------------------------------------------------------


def _geometry(x, y, gamma):
    a = gamma * np.einsum("ij,ij->i", x, x)
    b = gamma * np.einsum("ij,ij->i", y, y)
    ip = gamma * np.einsum("ij,ij->i", x, y)
    s = np.maximum(a + b + 2 * ip, 0.0)  # |z|^2
    delta = np.maximum(a + b - 2 * ip, 0.0)  # |x' - y'|^2
    # Direct forms are more accurate than a + b +- 2 ip when x' ~ -y' or x' ~ y'.
    s_direct = gamma * np.einsum("ij,ij->i", x + y, x + y)
    delta_direct = gamma * np.einsum("ij,ij->i", x - y, x - y)
    return (
        a,
        b,
        ip,
        np.where(np.isfinite(s_direct), s_direct, s),
        np.where(np.isfinite(delta_direct), delta_direct, delta),
    )


def _gerf_log_rel_var(s, d, A):
    """``t`` with ``Var1 / SM^2 = e^t - 1`` for GERF features at parameter ``A`` (THEORY 6.1).

    ``E[(f(x) f(y))^2] = (1-4A)^d (1-8A)^{-d/2} exp(2(1-4A)|z|^2/(1-8A) - |x|^2 - |y|^2)``,
    divided by ``SM^2 = exp(2 x.y)``; ``A = 0`` gives ``t = |z|^2`` (positive features).
    """
    return (
        d * np.log1p(-4.0 * A)
        - 0.5 * d * np.log1p(-8.0 * A)
        + 2.0 * (1.0 - 4.0 * A) * s / (1.0 - 8.0 * A)
        - s
    )


def _simplex_deficit(s, d, sign=1.0):
    """``1 - e^{-s} S``, ``S = E exp((w_i + w_j).z)`` for two simplex rows (THEORY 6.3).

    ``w_i = rho_i R s_i`` with ``s_i.s_j = c = -1/(d-1)``, so ``w_i + sign w_j`` has
    length ``N``, ``N^2 = rho_i^2 + rho_j^2 + 2 sign c rho_i rho_j``, and a uniform
    direction: ``S = E_N 0F1(; d/2; N^2 |z|^2 / 4)``.  The expectation over the two
    independent chi_d norms uses generalized Gauss-Laguerre quadrature in
    ``u = rho^2 / 2 ~ Gamma(d/2)``, summed in log space.  ``sign = -1`` gives the
    difference ``w_i - w_j`` (needed by the hyperbolic map).  ``c = 0`` reproduces
    the orthogonal value ``1 - e^{-s} M(d, d/2, s/2)``.
    """
    from scipy.special import roots_genlaguerre

    s = np.asarray(s, dtype=np.float64)
    c = -1.0 / (d - 1.0)
    nodes, weights = roots_genlaguerre(_SIMPLEX_NODES, d / 2.0 - 1.0)
    log_w = np.log(weights) - special.gammaln(d / 2.0)
    rho = np.sqrt(2.0 * nodes)
    n_sq = rho[:, None] ** 2 + rho[None, :] ** 2 + 2.0 * sign * c * rho[:, None] * rho[None, :]
    log_w2 = (log_w[:, None] + log_w[None, :]).ravel()
    n_sq = n_sq.ravel()
    out = np.empty_like(s)
    for i, value in enumerate(s.ravel()):
        log_f = _log_hyp0f1(d / 2.0, n_sq * value / 4.0)
        log_terms = log_w2 + log_f - value
        top = log_terms.max()
        out.flat[i] = -np.expm1(top + np.log(np.exp(log_terms - top).sum()))
    return out


def _block_deficit(s, d, projection, features):
    """``q`` with same-block ``Cov / SM^2 = -q`` for the exp-type maps (0 <= q < 1 orthogonal)."""
    if projection == "orthogonal":
        return _orthogonal_deficit(s, d)
    plus = _simplex_deficit(s, d, 1.0)
    if features == "hyperbolic":
        # cosh a cosh b = (cosh(a + b) + cosh(a - b)) / 2: the sum and the difference.
        return 0.5 * (plus + _simplex_deficit(s, d, -1.0))
    return plus


def _chi_log_mse(features, a, b, ip, s, delta, m, P, d, projection="orthogonal", A=0.0):
    """log MSE for chi norms (unbiased estimators): iid term plus P same-block pairs."""
    if features == "trigonometric":
        var1 = 0.5 * np.expm1(-delta) ** 2
        cov = _trig_gap(delta, d) if P else 0.0
        return (a + b) + _log_of_nonneg(var1 / m + (P / m**2) * cov)
    q = _block_deficit(s, d, projection, features) if P else np.zeros_like(s)
    if features == "positive":
        # Var1 / SM^2 = e^s - 1; Cov / SM^2 = -q.
        log_var = _log_expm1(s)
    elif features == "optimal":
        # Var1 / SM^2 = e^t - 1; the same-block Cov does not depend on A (THEORY 3.3).
        log_var = _log_expm1(np.maximum(_gerf_log_rel_var(s, d, A), 0.0))
    else:
        # Var1 / SM^2 = (e^s - 1)(1 - e^-s) / 2.
        log_var = _log_expm1(s) + np.log(-np.expm1(-np.maximum(s, 1e-300))) - np.log(2.0)
    with np.errstate(over="ignore", invalid="ignore"):
        correction = np.log1p(np.maximum(-(P / m) * q * np.exp(-log_var), -1.0))
    out = 2 * ip + log_var - np.log(m) + correction
    return np.where(s > 0, out, -np.inf)


def _chi_mse(features, a, b, ip, s, delta, m, P, d, projection="orthogonal", A=0.0):
    """Direct (non-log) MSE for chi norms; overflows to inf where the value does."""
    with np.errstate(over="ignore", invalid="ignore"):
        if features == "trigonometric":
            var1 = 0.5 * np.expm1(-delta) ** 2
            cov = _trig_gap(delta, d) if P else 0.0
            return np.exp(a + b) * np.maximum(var1 / m + (P / m**2) * cov, 0.0)
        q = _block_deficit(s, d, projection, features) if P else 0.0
        sm2 = np.exp(2 * ip)
        if features == "positive":
            rel = np.expm1(s) / m - (P / m**2) * q
        elif features == "optimal":
            t = np.maximum(_gerf_log_rel_var(s, d, A), 0.0)
            rel = np.expm1(t) / m - (P / m**2) * q
        else:
            rel = 0.5 * np.expm1(s) * -np.expm1(-s) / m - (P / m**2) * q
        return np.where(s > 0, sm2 * np.maximum(rel, 0.0), 0.0)


def _fixed_terms(features, a, b, ip, s, delta, m, P, d):
    """Pieces of the ``norms="fixed"`` (SMREG) MSE in log form.

    Returns ``(log_prefactor, inner, log_bias2)`` with
    ``MSE = exp(log_prefactor) * inner + exp(log_bias2)``.
    """
    half = d / 2.0
    if features == "trigonometric":
        # G(u) = 0F1(; d/2; -u) = E cos(w . delta), |w| = sqrt(d); bounded by 1.
        g1 = special.hyp0f1(half, -d * delta)
        g2 = special.hyp0f1(half, -d * delta / 2.0)
        g4 = special.hyp0f1(half, -d * delta / 4.0)
        var1 = (1.0 + g1) / 2.0 - g4**2
        cov = g2 - g4**2
        inner = var1 / m + (P / m**2) * cov + (g4 - np.exp(-delta / 2.0)) ** 2
        return a + b, inner, np.full_like(a, -np.inf)
    # F(u) = 0F1(; d/2; u) = E exp(w . z), |w| = sqrt(d).
    lf1 = _log_hyp0f1(half, d * s)
    lf2 = _log_hyp0f1(half, d * s / 2.0)
    lf4 = _log_hyp0f1(half, d * s / 4.0)
    ratio4 = np.exp(2 * lf4 - lf1)  # SMREG^2 / E X^2-scale, <= 1
    ratio2 = np.exp(lf2 - lf1)
    if features == "positive":
        second = 1.0
    else:
        second = 0.5 * (1.0 + np.exp(-lf1))  # E cosh^2 = (F(ds) + 1) / 2
    inner = (second - ratio4) / m + (P / m**2) * (ratio2 - ratio4)
    # bias: SMREG - SM = Lambda (e^{lf4} - e^{s/2}) = Lambda e^{s/2} expm1(lf4 - s/2)
    with np.errstate(divide="ignore"):
        log_bias2 = -(a + b) + s + 2 * np.log(np.abs(np.expm1(lf4 - s / 2.0)))
    return -(a + b) + lf1, inner, log_bias2


def theoretical_mse(
    x,
    y,
    *,
    features,
    n_features,
    projection="gaussian",
    norms="chi",
    gamma=1.0,
    A=None,
    log=False,
):
    """Closed-form mean squared error of ``phi(x).phi(y)`` as an estimate of ``exp(gamma x.y)``.

    Parameters
    ----------
    x, y : array-like of shape (d,) or (n_pairs, d)
        The pairs (broadcast against each other).
    features : {"positive", "hyperbolic", "trigonometric", "optimal"}
        The feature map (:class:`~favorkern.PositiveRandomFeatures`,
        :class:`~favorkern.HyperbolicRandomFeatures`,
        :class:`~favorkern.TrigonometricRandomFeatures` with ``kernel="softmax"``,
        :class:`~favorkern.OptimalPositiveRandomFeatures`: GERF with parameter ``A``).
    n_features : int
        Number ``m`` of random projections.  Hyperbolic and trigonometric maps have
        ``2 m`` outputs (``n_components = 2 m`` in the transformers).
    projection : {"gaussian", "orthogonal", "simplex"}, default="gaussian"
        iid rows, orthogonal blocks of ``d`` rows (the last block partial when
        ``d`` does not divide ``m``), or simplex blocks, as
        :func:`favorkern.draw_projection` draws them.  ``"simplex"`` has closed forms
        for the exp-type maps (positive, hyperbolic, optimal) with chi norms.
    norms : {"chi", "fixed"}, default="chi"
        ``"chi"``: unbiased estimators, the MSE is the variance.  ``"fixed"``: rows
        of length ``sqrt(d)``, an estimator of the regularized kernel SMREG; the
        MSE against ``exp(gamma x.y)`` is bias squared plus variance (positive,
        hyperbolic and trigonometric maps, iid or orthogonal).
    gamma : float, default=1.0
        Kernel scale, > 0.
    A : float or None, default=None
        GERF parameter of ``features="optimal"`` (< 1/8, where the variance is
        finite); ``None`` takes each pair's own optimum
        ``A* = (d - 2|z|^2 - sqrt((2|z|^2 + d)^2 + 8 d |z|^2)) / (16 d)``.
        Ignored by the other maps.
    log : bool, default=False
        Return ``log(MSE)``, computed in log space: finite where the MSE itself
        overflows float64 (``-inf`` where the MSE is exactly zero).

    Returns
    -------
    mse : float or ndarray of shape (n_pairs,)
        A float when both ``x`` and ``y`` are 1-D.

    Notes
    -----
    With ``x' = sqrt(gamma) x``, ``z = x' + y'``, ``delta = x' - y'``,
    ``SM = exp(x'.y')`` and ``m = k d + r`` projections, every estimator is an
    average of ``m`` per-projection terms, so (THEORY.md 2 and 3.3)

    ``MSE = Var1 / m + (P / m^2) Cov``,  ``P = k d (d - 1) + r (r - 1)``

    (``P = 0`` for iid rows), with (Performer, Lemma 2, and the exact block formula)

    * positive: ``Var1 = SM^2 (e^{|z|^2} - 1)``;
    * hyperbolic: ``Var1 = SM^2 (e^{|z|^2} - 1)(1 - e^{-|z|^2}) / 2``;
    * positive and hyperbolic: ``Cov = Lambda^2 [1F1(d; d/2; |z|^2/2) - e^{|z|^2}]``
      ``= -SM^2 E[1 - r_N]``, ``N ~ Poisson(|z|^2)``,
      ``r_n = (d)_n / ((d/2)_n 2^n)`` (a positive series, summed without
      cancellation over a window around its peak);
    * trigonometric: ``Var1 = e^{|x'|^2 + |y'|^2} (1 - e^{-|delta|^2})^2 / 2`` and
      ``Cov = e^{|x'|^2+|y'|^2} [1F1(d; d/2; -|delta|^2/2) - e^{-|delta|^2}]``, the
      ``1F1`` through Kummer's transformation as ``E[t_N]``, ``N ~ Poisson(|delta|^2/2)``,
      ``t_n = (-d/2)_n / (d/2)_n``, ``|t_n| <= 1``.

    GERF (``"optimal"``, THEORY.md 6.1): ``Var1 = SM^2 (e^t - 1)`` with
    ``t = d log(1-4A) - (d/2) log(1-8A) + 2(1-4A)|z|^2/(1-8A) - |z|^2``, and the
    same-block covariance of the positive map, whatever ``A``.  Simplex blocks
    (THEORY.md 6.3): ``Cov = Lambda^2 [S - e^{|z|^2}]`` with
    ``S = E 0F1(; d/2; N^2 |z|^2 / 4)``, ``N^2 = rho_i^2 + rho_j^2 + 2 c rho_i rho_j``,
    ``c = -1/(d-1)`` over independent chi_d norms (2-D Gauss-Laguerre quadrature);
    the hyperbolic map averages ``c`` and ``-c``.

    For ``norms="fixed"`` (THEORY.md 4) the moments are ``0F1(; d/2; .)`` values:
    ``E exp(w.z) = 0F1(; d/2; d |z|^2/4)`` and so on, and the bias ``SMREG - SM`` is
    added squared.  Performer Theorem 2 (orthogonal never worse for positive
    features) holds for these closed forms.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import theoretical_mse
    >>> x = np.array([0.5, 0.0, 0.0, 0.0])
    >>> y = np.array([0.0, 0.5, 0.0, 0.0])
    >>> iid = theoretical_mse(x, y, features="positive", n_features=4)
    >>> bool(np.isclose(iid, np.expm1(0.5) / 4))   # SM = 1 here
    True
    >>> ort = theoretical_mse(x, y, features="positive", n_features=4, projection="orthogonal")
    >>> bool(ort < iid)
    True
    >>> big = 20 * np.ones(4)
    >>> theoretical_mse(big, big, features="positive", n_features=4)
    inf
    >>> round(theoretical_mse(big, big, features="positive", n_features=4, log=True), 1)
    9598.6
    """
    x, y, scalar = _check_pairs(x, y)
    check_option(features, "features", ALL_FEATURES)
    m = check_int(n_features, "n_features")
    check_option(projection, "projection", _PROJECTIONS)
    check_option(norms, "norms", _NORMS)
    gamma = _check_gamma(gamma)
    if not isinstance(log, (bool, np.bool_)):
        raise TypeError(f"log must be a bool, got {type(log).__name__}: {log!r}")
    A = _check_a(A)
    if projection == "simplex" and features == "trigonometric":
        raise ValueError(
            "projection='simplex' has closed forms for the exp-type features only "
            "(positive, hyperbolic, optimal), not for features='trigonometric'"
        )
    if norms == "fixed" and (features == "optimal" or projection == "simplex"):
        raise ValueError(
            "norms='fixed' has closed forms for positive, hyperbolic and trigonometric "
            "features with gaussian or orthogonal projections only"
        )
    d = x.shape[1]
    P = _same_block_pairs(m, d, projection)
    a, b, ip, s, delta = _geometry(x, y, gamma)
    if features == "optimal" and A is None:
        A = optimal_gerf_a(s, d)
    if norms == "chi":
        if log:
            values = _chi_log_mse(features, a, b, ip, s, delta, m, P, d, projection, A)
        else:
            values = _chi_mse(features, a, b, ip, s, delta, m, P, d, projection, A)
        return _output(values, scalar)
    log_pre, inner, log_bias2 = _fixed_terms(features, a, b, ip, s, delta, m, P, d)
    if log:
        values = np.logaddexp(log_pre + _log_of_nonneg(inner), log_bias2)
    else:
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            values = np.exp(log_pre) * np.maximum(inner, 0.0) + np.exp(log_bias2)
    return _output(values, scalar)


# -- Monte Carlo ---------------------------------------------------------------------


@dataclass(frozen=True)
class MonteCarloMSE:
    """Monte-Carlo mean squared error of a random-feature kernel estimate, per pair.

    Attributes
    ----------
    mse : float or ndarray (n_pairs,)
        Mean over trials of ``(phi(x).phi(y) - k(x, y))^2``.
    se : float or ndarray
        Its standard error, ``std / sqrt(n_trials)``.  Under heavy tails (THEORY.md
        7.5) both ``mse`` and ``se`` are typically *too small*.
    mom : float or ndarray
        Median of the means of ``n_groups`` groups of trials.
    mom_low, mom_high : float or ndarray
        Distribution-free ~95% interval (order statistics of the group means) for
        the median of the group-mean distribution.  With light tails that median is
        the MSE; with heavy tails it lies below it, so a closed form far above
        ``mom_high`` flags the heavy-tail regime rather than a wrong formula.
    mom_coverage : float
        The exact binomial coverage of that interval.
    mean, mean_se : float or ndarray
        Mean estimate of the kernel and its standard error (a bias check).
    kernel : float or ndarray
        The exact ``exp(gamma x.y)``.
    n_trials, n_groups : int

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import empirical_mse
    >>> x = np.array([0.2, 0.1, 0.0, -0.1])
    >>> result = empirical_mse(x, x, features="hyperbolic", n_features=4, n_trials=500,
    ...                        random_state=0)
    >>> result.n_trials, result.n_groups
    (500, 20)
    >>> bool(result.mom_low <= result.mom <= result.mom_high)
    True
    """

    mse: object
    se: object
    mom: object
    mom_low: object
    mom_high: object
    mom_coverage: float
    mean: object
    mean_se: object
    kernel: object
    n_trials: int
    n_groups: int


def _feature_spec(features, projection, input_scale, A=0.0):
    from ._feature_maps import (
        hyperbolic_spec,
        optimal_positive_spec,
        positive_spec,
        trigonometric_spec,
    )

    m = projection.shape[0]
    if features == "positive":
        return positive_spec(projection, input_scale)
    if features == "optimal":
        return optimal_positive_spec(projection, input_scale, A)
    if features == "hyperbolic":
        return hyperbolic_spec(projection, input_scale, 2 * m)
    return trigonometric_spec(projection, input_scale, 2 * m, np.empty(0), softmax=True)


def _trials_spec(features, draws, input_scale, A=0.0):
    """One feature map evaluating all trials of ``draws`` (``(n_trials, m, d)``) at once.

    The library's builder is called on the trial-stacked projection, which gives the
    outputs of every trial side by side (``n_halves`` blocks of ``n_trials * m``
    columns: ``[exp(+u), exp(-u)]`` or ``[cos u, sin u]`` for the paired maps).  The
    stacked call normalizes by ``n_trials * m`` projections, a single trial by ``m``:
    every map's log-scale differs by exactly ``log(n_trials) / 2``, added back here.
    """
    from dataclasses import replace

    n_trials, m, d = draws.shape
    stacked = _feature_spec(features, draws.reshape(n_trials * m, d), input_scale, A)
    return replace(stacked, log_scale=stacked.log_scale + 0.5 * np.log(n_trials))


def _draw_trials(n_trials, m, d, projection, norms, rng):
    """``(n_trials, m, d)`` projections, each distributed as ``draw_projection(m, d, ...)``.

    One call of :func:`favorkern.draw_projection` per chunk: for ``"orthogonal"``
    it returns independent Haar blocks with independent row norms, and each trial
    takes ``ceil(m / d)`` consecutive blocks truncated to ``m`` rows -- exactly the
    distribution of a separate ``draw_projection(m, d)`` call (last block partial).
    """
    from .projections import draw_projection, padded_dims

    if projection == "gaussian":
        W = draw_projection(n_trials * m, d, projection="gaussian", norms=norms, random_state=rng)
        return W.reshape(n_trials, m, d)
    block = padded_dims(d) if projection == "structured" else d
    rows = -(-m // block) * block
    W = draw_projection(n_trials * rows, d, projection=projection, norms=norms, random_state=rng)
    return W.reshape(n_trials, rows, d)[:, :m]


def _mom_interval(group_means, confidence=0.95):
    """Median of means and an order-statistic interval for the median of the group means."""
    from scipy.stats import binom

    k = group_means.shape[-1]
    ordered = np.sort(group_means, axis=-1)
    mom = np.median(group_means, axis=-1)
    # largest j with P(Binom(k, 1/2) <= j - 1) <= (1 - confidence) / 2
    cdf = binom.cdf(np.arange(k), k, 0.5)
    alpha = (1.0 - confidence) / 2.0
    below = np.nonzero(cdf <= alpha)[0]
    j = int(below[-1]) + 1 if below.size else 0  # 0-based index of the lower order statistic
    coverage = 1.0 - 2.0 * (binom.cdf(j - 1, k, 0.5) if j > 0 else 0.0)
    return mom, ordered[..., j], ordered[..., k - 1 - j], float(coverage)


def empirical_mse(
    x,
    y,
    *,
    features,
    n_features,
    projection="gaussian",
    norms="chi",
    gamma=1.0,
    n_trials=1000,
    n_groups=20,
    projections=None,
    A=None,
    random_state=None,
):
    """Monte-Carlo MSE of the random-feature estimate of ``exp(gamma x.y)``.

    Each trial draws a projection with :func:`favorkern.draw_projection`, and the
    feature map is built by the same builders the transformers use
    (``favorkern._feature_maps``) and evaluated by their ``apply_feature_map``;
    a chunk of trials is stacked into one projection, so it costs one BLAS product
    and one vectorized ``exp``/``cos`` (the normalization is the single trial's).

    Parameters
    ----------
    x, y : array-like of shape (d,) or (n_pairs, d)
        The pairs (broadcast against each other).
    features : {"positive", "hyperbolic", "trigonometric", "optimal"}
        The feature map (softmax kernel).
    n_features : int
        Number ``m`` of random projections per trial (hyperbolic and trigonometric
        maps have ``2 m`` outputs), as in :func:`theoretical_mse`.
    projection : {"gaussian", "orthogonal", "simplex", "structured"}, default="gaussian"
        Projection kind (``"structured"``: SORF, which has no closed form).
    norms : {"chi", "fixed"}, default="chi"
        Row norms (see :func:`favorkern.draw_projection`).
    gamma : float, default=1.0
        Kernel scale, > 0.
    n_trials : int, default=1000
        Independent projections.  Memory is ``O(n_pairs * n_trials)`` plus bounded
        chunks.
    n_groups : int, default=20
        Groups for the median of means (at most ``n_trials``).
    projections : ndarray of shape (n_trials, n_features, d), optional
        Use these draws instead of drawing (e.g. to reuse one set of draws for
        several feature maps, or to test another projection scheme).
        ``projection``, ``norms`` and ``random_state`` are then ignored.
    A : float or None, default=None
        GERF parameter of ``features="optimal"``; ``None`` runs each pair at its own
        ``A*`` (as :func:`theoretical_mse` does), on the same draws.
    random_state : int, RandomState instance or None, default=None
        Seed of the draws.

    Returns
    -------
    result : MonteCarloMSE
        MSE, standard error, median of means with its interval, mean estimate.

    Notes
    -----
    For exp-type features a single projection's squared error has kurtosis of
    order ``e^{4 |z|^2}`` (THEORY.md 7.5): trust ``mse +- se`` only where
    ``e^{4 |z|^2} / m`` is moderate; elsewhere prefer :func:`theoretical_mse` and
    read the median-of-means interval as a robust lower-side summary.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import empirical_mse, theoretical_mse
    >>> x = np.array([0.3, 0.1, 0.0, 0.2])
    >>> y = np.array([0.1, -0.2, 0.3, 0.0])
    >>> mc = empirical_mse(x, y, features="positive", n_features=8, n_trials=4000,
    ...                    random_state=0)
    >>> exact = theoretical_mse(x, y, features="positive", n_features=8)
    >>> bool(abs(mc.mse - exact) < 4.5 * mc.se)
    True
    """
    from sklearn.utils import check_random_state

    from ._feature_maps import apply_feature_map

    x, y, scalar = _check_pairs(x, y)
    check_option(features, "features", ALL_FEATURES)
    m = check_int(n_features, "n_features")
    check_option(projection, "projection", _MC_PROJECTIONS)
    check_option(norms, "norms", _NORMS)
    gamma = _check_gamma(gamma)
    A = _check_a(A)
    n, d = x.shape
    if projections is not None:
        projections = np.asarray(projections)
        if projections.dtype.kind not in "iuf":
            raise TypeError(f"projections must be a numeric array, got dtype {projections.dtype}")
        if projections.ndim != 3 or projections.shape[1:] != (m, d):
            raise ValueError(
                f"projections must have shape (n_trials, {m}, {d}) for n_features={m} and "
                f"d={d}, got {projections.shape}"
            )
        n_trials = projections.shape[0]
    n_trials = check_int(n_trials, "n_trials")
    n_groups = min(check_int(n_groups, "n_groups"), n_trials)
    rng = check_random_state(random_state)

    input_scale = float(np.sqrt(gamma))
    if features == "optimal" and A is None:
        a_pair = optimal_gerf_a(gamma * np.einsum("ij,ij->i", x + y, x + y), d)
        if np.ptp(a_pair) > 0:  # one A per call: run pair groups of equal A* on shared draws
            if projections is None:
                projections = _draw_trials(n_trials, m, d, projection, norms, rng)
            parts = []
            for value in np.unique(a_pair):
                idx = np.nonzero(a_pair == value)[0]
                part = empirical_mse(
                    x[idx],
                    y[idx],
                    features=features,
                    n_features=m,
                    gamma=gamma,
                    n_groups=n_groups,
                    projections=projections,
                    A=float(value),
                )
                parts.append((idx, part))
            fields = {}
            for name in ("mse", "se", "mom", "mom_low", "mom_high", "mean", "mean_se", "kernel"):
                values = np.empty(n)
                for idx, part in parts:
                    values[idx] = np.atleast_1d(getattr(part, name))
                fields[name] = _output(values, scalar)
            return MonteCarloMSE(
                **fields,
                mom_coverage=parts[0][1].mom_coverage,
                n_trials=n_trials,
                n_groups=n_groups,
            )
        A = float(a_pair[0])
    A = 0.0 if A is None else A
    kernel = np.exp(gamma * np.einsum("ij,ij->i", x, y))
    points = np.ascontiguousarray(np.concatenate([x, y], axis=0))
    n_out = m if features in ("positive", "optimal") else 2 * m
    # per trial: 2n x n_out features plus the n_out x d stacked weights (and a transpose)
    chunk = max(1, min(n_trials, _MC_CHUNK_ELEMENTS // (n_out * (2 * n + 2 * d))))
    estimates = np.empty((n, n_trials), dtype=np.float64)
    for lo in range(0, n_trials, chunk):
        hi = min(n_trials, lo + chunk)
        if projections is None:
            draws = _draw_trials(hi - lo, m, d, projection, norms, rng)
        else:
            draws = check_float_array(projections[lo:hi], "projections", dtype=np.float64)
        spec = _trials_spec(features, np.ascontiguousarray(draws), input_scale, A)
        # columns: n_halves blocks, each (trials, m) -> (points, halves, trials, m)
        phi = apply_feature_map(points, spec).reshape(2 * n, n_out // m, hi - lo, m)
        estimates[:, lo:hi] = np.einsum("phtj,phtj->pt", phi[:n], phi[n:])

    errors = estimates - kernel[:, None]
    squared = errors**2
    mse = squared.mean(axis=1)
    se = squared.std(axis=1, ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.full(n, np.nan)
    groups = np.array_split(squared, n_groups, axis=1)
    group_means = np.stack([g.mean(axis=1) for g in groups], axis=1)
    mom, low, high, coverage = _mom_interval(group_means)
    mean = estimates.mean(axis=1)
    mean_se = (
        estimates.std(axis=1, ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.full(n, np.nan)
    )
    return MonteCarloMSE(
        mse=_output(mse, scalar),
        se=_output(se, scalar),
        mom=_output(mom, scalar),
        mom_low=_output(low, scalar),
        mom_high=_output(high, scalar),
        mom_coverage=coverage,
        mean=_output(mean, scalar),
        mean_se=_output(mean_se, scalar),
        kernel=_output(kernel, scalar),
        n_trials=n_trials,
        n_groups=n_groups,
    )


# -- studies -------------------------------------------------------------------------

# (name, norm l of both vectors, angle between them): small/moderate |z|^2 so that the
# Monte Carlo is trustworthy at a few thousand trials (THEORY.md 7.5), and angles from
# nearby (trigonometric wins) to nearly opposite (positive wins, SM small).
_DEFAULT_PAIRS = (
    ("near", 0.5, np.pi / 6),
    ("right", 0.75, np.pi / 2),
    ("obtuse", 1.0, 3 * np.pi / 4),
    ("opposite", 1.0, 0.9 * np.pi),
)


def default_pairs(n_dims=16, *, random_state=0):
    """The pairs of :func:`variance_study`: equal norms ``l``, angle ``phi``.

    Parameters
    ----------
    n_dims : int, default=16
        Dimension ``d`` (>= 2).
    random_state : int, RandomState instance or None, default=0
        Seed of the (random, fixed) plane the pairs lie in.

    Returns
    -------
    x, y : ndarray of shape (4, n_dims)
    names : list of str
        ``"near"`` (l = 0.5, 30 degrees), ``"right"`` (0.75, 90), ``"obtuse"``
        (1, 135), ``"opposite"`` (1, 162).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import default_pairs
    >>> x, y, names = default_pairs(16)
    >>> names
    ['near', 'right', 'obtuse', 'opposite']
    >>> np.round(np.linalg.norm(x, axis=1), 2).tolist()
    [0.5, 0.75, 1.0, 1.0]
    """
    from sklearn.utils import check_random_state

    d = check_int(n_dims, "n_dims", min_value=2)
    rng = check_random_state(random_state)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u, v = basis[:, 0], basis[:, 1]
    x = np.array([length * u for _, length, _ in _DEFAULT_PAIRS])
    y = np.array([length * (np.cos(a) * u + np.sin(a) * v) for _, length, a in _DEFAULT_PAIRS])
    return x, y, [name for name, _, _ in _DEFAULT_PAIRS]


def _parse_sizes(values, name):
    if isinstance(values, (int, np.integer)):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return [check_int(v, name) for v in values]


def _parse_options(values, name, options):
    if isinstance(values, str):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return [check_option(v, name, options) for v in values]


def _has_closed_form(features, projection, norms):
    """Whether :func:`theoretical_mse` covers this combination."""
    if projection == "structured":
        return False
    if projection == "simplex" and features == "trigonometric":
        return False
    return not (norms == "fixed" and (features == "optimal" or projection == "simplex"))


def variance_study(
    x=None,
    y=None,
    *,
    pair_names=None,
    n_dims=16,
    n_features=(16, 32, 64, 128, 256),
    features=ALL_FEATURES,
    projection=_PROJECTIONS,
    norms="chi",
    gamma=1.0,
    n_trials=2000,
    random_state=0,
    progress=None,
):
    """Closed-form and Monte-Carlo MSE for every estimator, projection and ``m``.

    Parameters
    ----------
    x, y : array-like of shape (n_pairs, d), optional
        The pairs; default :func:`default_pairs` in ``n_dims`` dimensions.
    pair_names : sequence of str, optional
        Labels of the pairs (default ``"pair0"``, ... or the default pairs' names).
    n_dims : int, default=16
        Dimension of the default pairs (ignored when ``x`` is given).
    n_features : int or sequence of int, default=(16, 32, 64, 128, 256)
        Numbers ``m`` of projections.
    features : str or sequence of str, default=("positive", "hyperbolic", "trigonometric", \
"optimal")
        ``"optimal"`` runs each pair at its own ``A*``.
    projection : str or sequence of str, default=("gaussian", "orthogonal", "simplex")
        ``"structured"`` (SORF) may be added; it has no closed form, so its
        ``theoretical_mse`` is NaN (as for trigonometric features with simplex blocks).
    norms : {"chi", "fixed"}, default="chi"
    gamma : float, default=1.0
    n_trials : int, default=2000
        Monte-Carlo trials per (projection, m); the draws are shared by the feature
        maps (common random numbers, which sharpens their comparison).
    random_state : int, RandomState instance or None, default=0
    progress : callable, optional
        ``progress(iterable, total=..., desc=...)`` wrapping the loop over
        (projection, m), e.g. ``tqdm``.

    Returns
    -------
    study : pandas.DataFrame
        One row per (features, projection, n_features, pair) with columns
        ``features, projection, n_features, pair, norm_x, norm_y, angle, kernel,
        empirical_mse, se, mom, mom_low, mom_high, theoretical_mse, ratio, z``
        where ``ratio = empirical_mse / theoretical_mse`` and
        ``z = (empirical_mse - theoretical_mse) / se``.

    Examples
    --------
    >>> from favorkern.diagnostics import variance_study
    >>> study = variance_study(n_features=[8], features="positive", n_trials=200)
    >>> study.shape
    (12, 16)
    >>> sorted(study["projection"].unique())
    ['gaussian', 'orthogonal', 'simplex']
    """
    import pandas as pd
    from sklearn.utils import check_random_state

    if x is None and y is None:
        x, y, default_names = default_pairs(n_dims)
    elif x is None or y is None:
        raise ValueError("x and y must both be given, or neither (for the default pairs)")
    else:
        default_names = None
    x, y, _ = _check_pairs(x, y)
    n, d = x.shape
    if pair_names is None:
        pair_names = default_names or [f"pair{i}" for i in range(n)]
    pair_names = [str(p) for p in pair_names]
    if len(pair_names) != n:
        raise ValueError(f"pair_names must have {n} entries (one per pair), got {len(pair_names)}")
    sizes = _parse_sizes(n_features, "n_features")
    kinds = _parse_options(features, "features", ALL_FEATURES)
    schemes = _parse_options(projection, "projection", _MC_PROJECTIONS)
    check_option(norms, "norms", _NORMS)
    gamma = _check_gamma(gamma)
    n_trials = check_int(n_trials, "n_trials", min_value=2)
    rng = check_random_state(random_state)

    norm_x = np.linalg.norm(x, axis=1)
    norm_y = np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.clip(np.einsum("ij,ij->i", x, y) / (norm_x * norm_y), -1.0, 1.0)
    angle = np.arccos(cosine)

    jobs = [(scheme, m) for scheme in schemes for m in sizes]
    loop = jobs if progress is None else progress(jobs, total=len(jobs), desc="variance")
    rows = []
    for scheme, m in loop:
        draws = _draw_trials(n_trials, m, d, scheme, norms, rng)
        for kind in kinds:
            mc = empirical_mse(x, y, features=kind, n_features=m, gamma=gamma, projections=draws)
            if _has_closed_form(kind, scheme, norms):
                theory = theoretical_mse(
                    x, y, features=kind, n_features=m, projection=scheme, norms=norms, gamma=gamma
                )
            else:
                theory = np.full(n, np.nan)
            for i in range(n):
                rows.append(
                    {
                        "features": kind,
                        "projection": scheme,
                        "n_features": m,
                        "pair": pair_names[i],
                        "norm_x": norm_x[i],
                        "norm_y": norm_y[i],
                        "angle": angle[i],
                        "kernel": mc.kernel[i],
                        "empirical_mse": mc.mse[i],
                        "se": mc.se[i],
                        "mom": mc.mom[i],
                        "mom_low": mc.mom_low[i],
                        "mom_high": mc.mom_high[i],
                        "theoretical_mse": theory[i],
                    }
                )
    study = pd.DataFrame(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        study["ratio"] = study["empirical_mse"] / study["theoretical_mse"]
        study["z"] = (study["empirical_mse"] - study["theoretical_mse"]) / study["se"]
    return study


def _study_summary(study):
    """One row per (pair, features, projection) of a :func:`variance_study` frame.

    Columns ``pair, norm, angle_deg, features, projection, rel_mse_m<lo>,
    rel_mse_m<hi>`` (closed-form MSE / k(x, y)^2 at the smallest and largest ``m``),
    ``ratio_min, ratio_max`` (Monte Carlo / closed form over ``m``) and ``max_abs_z``.
    Shared by ``favorkern variance`` and ``favorkern report``.
    """
    import pandas as pd

    rows = []
    m_lo, m_hi = study["n_features"].min(), study["n_features"].max()
    for (pair, kind, scheme), group in study.groupby(
        ["pair", "features", "projection"], sort=False
    ):
        group = group.set_index("n_features")
        k2 = group["kernel"].iloc[0] ** 2
        finite = group["z"].replace([np.inf, -np.inf], np.nan).dropna()
        ratios = group["ratio"].replace([np.inf, -np.inf], np.nan).dropna()
        rows.append(
            {
                "pair": pair,
                "norm": group["norm_x"].iloc[0],
                "angle_deg": float(np.degrees(group["angle"].iloc[0])),
                "features": kind,
                "projection": scheme,
                f"rel_mse_m{m_lo}": group.loc[m_lo, "theoretical_mse"] / k2,
                f"rel_mse_m{m_hi}": group.loc[m_hi, "theoretical_mse"] / k2,
                "ratio_min": ratios.min() if len(ratios) else np.nan,
                "ratio_max": ratios.max() if len(ratios) else np.nan,
                "max_abs_z": finite.abs().max() if len(finite) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def convergence(
    X,
    Y=None,
    *,
    features="positive",
    n_features=(16, 32, 64, 128, 256, 512),
    projection="orthogonal",
    gamma=1.0,
    n_repeats=3,
    random_state=None,
):
    """Uniform convergence of the approximate kernel matrix as ``m`` grows.

    For each ``m`` and repeat, fits the transformer (``n_components = m`` for
    positive, ``2 m`` for hyperbolic and trigonometric features, so ``m`` is the
    number of projections as everywhere in this module) and compares
    ``phi(X) phi(Y)^T`` with ``exp(gamma X Y^T)`` over all entries: the quantity of
    Performer Theorem 4 (THEORY.md 5), where the ``m`` needed for a given
    max-error grows like ``exp(2 R^2)`` with the largest norm ``R``.

    Parameters
    ----------
    X : array-like of shape (n_samples_X, d)
    Y : array-like of shape (n_samples_Y, d), optional
        Default ``X``.
    features : {"positive", "hyperbolic", "trigonometric"}, default="positive"
    n_features : int or sequence of int, default=(16, 32, 64, 128, 256, 512)
    projection : {"orthogonal", "gaussian"}, default="orthogonal"
    gamma : float, default=1.0
    n_repeats : int, default=3
        Independent projections per ``m``.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    errors : pandas.DataFrame
        Columns ``n_features, repeat, max_rel_error, mean_rel_error, max_abs_error,
        mean_abs_error`` and ``theoretical_rel_rmse`` (the closed-form root-mean
        relative error averaged over entries, the same for every repeat).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import convergence
    >>> X = np.random.default_rng(0).normal(scale=0.2, size=(30, 8))
    >>> errors = convergence(X, n_features=[16, 256], n_repeats=2, random_state=0)
    >>> means = errors.groupby("n_features")["mean_rel_error"].mean()
    >>> bool(means[256] < means[16])
    True
    """
    import pandas as pd
    from sklearn.utils import check_random_state

    from .features import (
        HyperbolicRandomFeatures,
        OptimalPositiveRandomFeatures,
        PositiveRandomFeatures,
        TrigonometricRandomFeatures,
    )

    X = check_float_array(X, "X", ndim=2, dtype=np.float64)
    Y = X if Y is None else check_float_array(Y, "Y", ndim=2, dtype=np.float64)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of columns, got {X.shape[1]} and {Y.shape[1]}"
        )
    check_option(features, "features", ALL_FEATURES)
    check_option(projection, "projection", _PROJECTIONS)
    sizes = _parse_sizes(n_features, "n_features")
    gamma = _check_gamma(gamma)
    n_repeats = check_int(n_repeats, "n_repeats")
    rng = check_random_state(random_state)
    transformer = {
        "positive": PositiveRandomFeatures,
        "hyperbolic": HyperbolicRandomFeatures,
        "trigonometric": TrigonometricRandomFeatures,
        "optimal": OptimalPositiveRandomFeatures,
    }[features]
    width = 1 if features in ("positive", "optimal") else 2
    if features == "trigonometric" and projection == "simplex":
        raise ValueError("projection='simplex' has no closed form for trigonometric features")
    # The transformer fits one A* on X (homogeneity heuristic); the closed form uses it too.
    A = transformer(1, gamma=gamma).fit(X).A_ if features == "optimal" else None

    exact = np.exp(gamma * (X @ Y.T))
    xi = np.repeat(X, Y.shape[0], axis=0)
    yj = np.tile(Y, (X.shape[0], 1))
    rows = []
    for m in sizes:
        theory = theoretical_mse(
            xi, yj, features=features, n_features=m, projection=projection, gamma=gamma, A=A
        )
        rel_rmse = float(np.mean(np.sqrt(theory) / exact.ravel()))
        for repeat in range(n_repeats):
            mapper = transformer(
                width * m, gamma=gamma, projection=projection, random_state=rng
            ).fit(X)
            approx = mapper.transform(X) @ mapper.transform(Y).T
            abs_error = np.abs(approx - exact)
            rel_error = abs_error / exact
            rows.append(
                {
                    "n_features": m,
                    "repeat": repeat,
                    "max_rel_error": float(rel_error.max()),
                    "mean_rel_error": float(rel_error.mean()),
                    "max_abs_error": float(abs_error.max()),
                    "mean_abs_error": float(abs_error.mean()),
                    "theoretical_rel_rmse": rel_rmse,
                }
            )
    return pd.DataFrame(rows)


def attention_error(
    Q,
    K,
    V,
    *,
    causal=False,
    n_features=256,
    features="positive",
    projection="orthogonal",
    scale=None,
    projection_matrix=None,
    random_state=None,
):
    """Per-row relative error of :func:`favorkern.favor_attention` against exact attention.

    Parameters
    ----------
    Q, K : array-like of shape (..., L, d)
    V : array-like of shape (..., L, dv)
    causal : bool, default=False
    n_features : int, default=256
    features : str, default="positive"
    projection : str, default="orthogonal"
    scale : float, optional
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
    >>> errors = attention_error(Q, K, V, n_features=256, random_state=0)
    >>> errors.shape
    (64,)
    >>> bool(np.median(errors) < 0.2)
    True
    """
    from .attention import favor_attention, softmax_attention

    exact = np.asarray(softmax_attention(Q, K, V, causal=causal, gamma=scale))
    approx = np.asarray(
        favor_attention(
            Q,
            K,
            V,
            causal=causal,
            n_components=n_features,
            feature_map=features,
            projection=projection,
            gamma=scale,
            projection_matrix=projection_matrix,
            random_state=random_state,
        )
    )
    diff = np.linalg.norm(approx.astype(np.float64) - exact, axis=-1)
    norm = np.linalg.norm(exact.astype(np.float64), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)

"""Closed-form variance pieces shared by the feature-map modules (:ref:`theory`).

Conventions: the target is ``SM(x, y) = exp(x'.y')`` in scaled inputs ``x'``;
:class:`PairGeometry` holds ``a = |x'|^2``, ``b = |y'|^2``, ``ip = x'.y'``,
``s = |x' + y'|^2`` and ``delta = |x' - y'|^2`` per pair.  Every estimator is an
average of ``m`` per-projection terms with ``P`` ordered same-block pairs, so
``MSE = Var1 / m + (P / m^2) Cov``; each map module writes its ``Var1`` and ``Cov``
with the series and special functions here, in log space where they can overflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .. import _config

# Gauss-Laguerre nodes for the simplex covariance (a 2-D expectation over chi norms).
_SIMPLEX_NODES = 96
# Poisson windows: mean +- (12 sqrt(mean) + 40) holds all but ~e^-70 of the mass.
_WINDOW_SIGMAS = 12.0
_WINDOW_PAD = 40
# Beyond this Poisson mean the window would be large and the orthogonal correction is
# negligible against the iid term (it is bounded by one unit of it); the mean is clipped.
_MAX_POISSON_MEAN = 1.0e6


@dataclass(frozen=True)
class PairGeometry:
    """Squared norms and inner products of scaled pairs ``(x', y')``, float64 arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps import PairGeometry
    >>> g = PairGeometry.of(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 1.0)
    >>> float(g.s[0]), float(g.ip[0])
    (2.0, 0.0)
    """

    a: np.ndarray
    b: np.ndarray
    ip: np.ndarray
    s: np.ndarray
    delta: np.ndarray

    @classmethod
    def of(cls, x, y, gamma):
        """The geometry of ``x' = sqrt(gamma) x`` and ``y' = sqrt(gamma) y`` (rows)."""
        a = gamma * np.einsum("ij,ij->i", x, x)
        b = gamma * np.einsum("ij,ij->i", y, y)
        ip = gamma * np.einsum("ij,ij->i", x, y)
        s = np.maximum(a + b + 2 * ip, 0.0)
        delta = np.maximum(a + b - 2 * ip, 0.0)
        # Direct forms are more accurate than a + b +- 2 ip when x' ~ -y' or x' ~ y'.
        s_direct = gamma * np.einsum("ij,ij->i", x + y, x + y)
        delta_direct = gamma * np.einsum("ij,ij->i", x - y, x - y)
        return cls(
            a,
            b,
            ip,
            np.where(np.isfinite(s_direct), s_direct, s),
            np.where(np.isfinite(delta_direct), delta_direct, delta),
        )


@dataclass(frozen=True)
class BasisPairGeometry(PairGeometry):
    """:class:`PairGeometry` plus the components ``z`` of ``x' + y'`` in a map's own basis.

    ``z`` has shape ``(n_pairs, d)``; the scalar fields are those of the same pairs
    (``s`` is ``|z|^2`` when the basis is orthonormal).  Built by the full-matrix
    dense-exponential maps (:meth:`SderfFeatureMap.pair_geometry
    <favorkern.feature_maps.SderfFeatureMap.pair_geometry>`), whose variance is a
    sum over the directions of their basis.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps._variance import BasisPairGeometry
    >>> x, y = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    >>> g = BasisPairGeometry.of(x, y, 1.0, basis=np.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> g.z.tolist(), float(g.s[0])
    ([[1.0, 1.0]], 2.0)
    """

    z: np.ndarray = None

    @classmethod
    def of(cls, x, y, gamma, basis=None):
        """Geometry of ``x' = sqrt(gamma) x``, ``y'``; ``z = basis @ (x' + y')`` per row."""
        base = PairGeometry.of(x, y, gamma)
        total = np.sqrt(gamma) * (x + y)
        z = total if basis is None else total @ np.asarray(basis, dtype=np.float64).T
        return cls(base.a, base.b, base.ip, base.s, base.delta, z)


def derf_log_rel_var(z, a):
    """``t`` with ``Var1 / SM^2 = e^t - 1`` for a per-direction GERF (:ref:`theory-favor-sharp`).

    Per direction ``l`` of the map's basis, with ``z_l`` the component of ``x' + y'``,
    ``E[(f(x) f(y))^2] / SM^2`` factorizes into
    ``(1 - 4a_l)(1 - 8a_l)^(-1/2) exp(z_l^2 / (1 - 8a_l))``, so
    ``t = sum_l [log1p(16 a_l^2 / (1 - 8a_l)) / 2 + z_l^2 / (1 - 8a_l)]``: a sum of
    non-negative terms (``(1 - 4a)^2 = (1 - 8a) + 16a^2``), with no cancellation.
    Equal ``a_l = A`` gives :func:`gerf_log_rel_var`.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.feature_maps._variance import derf_log_rel_var, gerf_log_rel_var
    >>> z = np.array([[0.3, -0.4, 1.2]])
    >>> bool(np.isclose(derf_log_rel_var(z, np.full(3, -0.2))[0],
    ...                 gerf_log_rel_var(np.sum(z**2), 3, -0.2)))
    True
    """
    a = np.asarray(a, dtype=np.float64)
    denominator = 1.0 - 8.0 * a
    per_direction = 0.5 * np.log1p(16.0 * a * (a / denominator)) + z * z / denominator
    return per_direction.sum(axis=-1)


def same_block_pairs(m: int, d: int, projection: str) -> int:
    """``P = k d (d - 1) + r (r - 1)`` ordered same-block pairs for ``m = k d + r``; 0 iid.

    Examples
    --------
    >>> from favorkern.feature_maps import same_block_pairs
    >>> same_block_pairs(5, 4, "orthogonal"), same_block_pairs(5, 4, "gaussian")
    (12, 0)
    """
    if projection == "gaussian":
        return 0
    if projection == "simplex" and d == 1:  # draw_projection's simplex is orthogonal there
        return 0
    k, r = divmod(m, d)
    return k * d * (d - 1) + r * (r - 1)


def log_one_minus_r(n_max: int, d: int) -> np.ndarray:
    """``log(1 - r_n)``, ``r_n = (d)_n / ((d/2)_n 2^n) = prod_{k<n} (d + k) / (d + 2k)``."""
    k = np.arange(n_max, dtype=np.float64)
    log_r = np.concatenate([[0.0], np.cumsum(np.log1p(-k / (d + 2.0 * k)))])
    with np.errstate(divide="ignore"):
        return np.log(-np.expm1(log_r))


def log_abs_t(n_max: int, d: int):
    """``t_n = (-d/2)_n / (d/2)_n``: returns ``(log|t_n|, sign t_n)`` for ``n <= n_max``."""
    k = np.arange(n_max, dtype=np.float64)
    factors = (k - d / 2.0) / (k + d / 2.0)
    with np.errstate(divide="ignore"):
        log_abs = np.concatenate([[0.0], np.cumsum(np.log(np.abs(factors)))])
    sign = np.concatenate([[1.0], np.cumprod(np.sign(factors))])
    return log_abs, sign


def poisson_expectation(lam, log_abs_g, sign_g=None):
    """``E[g(N)]``, ``N ~ Poisson(lam)``, summed over a window around ``lam``.

    ``|g| <= 1`` is assumed, so the omitted tails contribute at most ~e^-70.
    ``log_abs_g`` (and ``sign_g``) are tabulated for ``n = 0 .. len - 1``.
    """
    lam = np.minimum(np.asarray(lam, dtype=np.float64), _MAX_POISSON_MEAN)
    half = np.ceil(_WINDOW_SIGMAS * np.sqrt(lam)) + _WINDOW_PAD
    start = np.maximum(0.0, np.floor(lam - half)).astype(np.int64)
    width = int(2 * half.max()) + 1 if lam.size else 1
    out = np.empty(lam.shape, dtype=np.float64)
    step = max(1, _config.VARIANCE_CHUNK_ELEMENTS // width)
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


def table_length(lam) -> int:
    lam = np.minimum(np.asarray(lam, dtype=np.float64), _MAX_POISSON_MEAN)
    top = lam.max() if lam.size else 0.0
    return int(top + 2 * (_WINDOW_SIGMAS * np.sqrt(top) + _WINDOW_PAD)) + 4


def orthogonal_deficit(s, d):
    """``q(s) = 1 - e^{-s} M(d, d/2, s/2) = E[1 - r_N]``, ``N ~ Poisson(s)``.

    The positive/hyperbolic same-block covariance is ``Cov = -SM^2 q(s)``
    (:ref:`theory-orthogonal-exact`: ``Lambda^2 [M(d, d/2, |z|^2/2) - e^{|z|^2}]``).  All terms are
    positive, so the sum has no cancellation; ``0 <= q < 1``.
    """
    return poisson_expectation(s, log_one_minus_r(table_length(s), d))


def trig_gap(delta, d):
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
        coef = -np.exp(-special.gammaln(n + 1.0) + log_one_minus_r(40, d)[2:40])
        out[small] = (coef * (-delta[small, None]) ** n).sum(axis=1)
    large = ~small
    if large.any():
        v = delta[large] / 2.0
        log_abs, sign = log_abs_t(table_length(v), d)
        out[large] = poisson_expectation(v, log_abs, sign) - np.exp(-delta[large])
    return out


def log_hyp0f1(b, u):
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


def log_expm1(t):
    """``log(e^t - 1)`` for ``t >= 0`` (``-inf`` at 0), finite for any finite ``t``."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(
            t <= 30.0,
            np.log(np.expm1(np.minimum(t, 30.0))),
            t + np.log1p(-np.exp(-np.maximum(t, 30.0))),
        )


def log_of_nonneg(value):
    """log of a quantity that is >= 0 mathematically; rounding below 0 gives -inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(value, 0.0))


def gerf_log_rel_var(s, d, A):
    """``t`` with ``Var1 / SM^2 = e^t - 1`` for GERF features at parameter ``A``.

    See :ref:`theory-favor-plus-plus`.

    ``E[(f(x) f(y))^2] = (1-4A)^d (1-8A)^{-d/2} exp(2(1-4A)|z|^2/(1-8A) - |x|^2 - |y|^2)``,
    divided by ``SM^2 = exp(2 x.y)``; ``A = 0`` gives ``t = |z|^2`` (positive features).
    Written as ``(d/2) log1p(16 A^2 / (1 - 8A)) + |z|^2 / (1 - 8A)``: two non-negative
    terms, so ``t >= 0`` holds in floating point too.
    """
    A = np.asarray(A, dtype=np.float64)
    denominator = 1.0 - 8.0 * A
    # 16 A (A / (1 - 8A)): the ratio is bounded, so a huge |A| does not overflow A^2
    return 0.5 * d * np.log1p(16.0 * A * (A / denominator)) + s / denominator


def simplex_deficit(s, d, sign=1.0):
    """``1 - e^{-s} S``, ``S = E exp((w_i + w_j).z)`` for two simplex rows (:ref:`theory-simplex`).

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
        log_f = log_hyp0f1(d / 2.0, n_sq * value / 4.0)
        log_terms = log_w2 + log_f - value
        top = log_terms.max()
        out.flat[i] = -np.expm1(top + np.log(np.exp(log_terms - top).sum()))
    return out


def block_deficit(s, d, projection, paired=False):
    """``q`` with same-block ``Cov / SM^2 = -q`` for the exp-type maps (0 <= q < 1 orthogonal).

    ``paired``: the ``exp(+u), exp(-u)`` map, whose covariance averages the sum and
    the difference of two rows (``cosh a cosh b = (cosh(a + b) + cosh(a - b)) / 2``).
    """
    if projection == "orthogonal":
        return orthogonal_deficit(s, d)
    plus = simplex_deficit(s, d, 1.0)
    if paired:
        return 0.5 * (plus + simplex_deficit(s, d, -1.0))
    return plus


def exp_map_log_mse(geom, log_rel_var, deficit, m, P):
    """log MSE of an exp-type map: ``SM^2 (Var1/SM^2 / m - (P/m^2) q)`` in log space.

    ``log_rel_var = log(Var1 / SM^2)`` and ``deficit = q`` with the same-block
    ``Cov / SM^2 = -q`` (zero for iid rows).
    """
    # q / (Var1 / SM^2) in log space: both underflow at tiny |z| (0 * inf otherwise)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ratio = np.sign(deficit) * np.exp(np.log(np.abs(deficit)) - log_rel_var)
        ratio = np.where(deficit == 0, 0.0, ratio)
        correction = np.log1p(np.maximum(-(P / m) * ratio, -1.0))
    out = 2 * geom.ip + log_rel_var - np.log(m) + correction
    # Var1 = 0 (z = 0 at A = 0) gives MSE = 0; at z = 0 with A != 0 it does not vanish.
    return np.where(np.isneginf(log_rel_var), -np.inf, out)


def fixed_exp_log_mse(geom, m, P, d, second_moment):
    """log MSE of an exp-type map with rows of length ``sqrt(d)`` (:ref:`theory-smreg`).

    ``F(u) = 0F1(; d/2; u) = E exp(w . z)``; ``second_moment(lf1)`` is the map's
    ``E X^2 / F(d s)`` given ``lf1 = log F(d s)`` (1 for positive features).  The
    bias ``SMREG - SM`` enters squared.
    """
    half = d / 2.0
    s = geom.s
    lf1 = log_hyp0f1(half, d * s)
    lf2 = log_hyp0f1(half, d * s / 2.0)
    lf4 = log_hyp0f1(half, d * s / 4.0)
    ratio4 = np.exp(2 * lf4 - lf1)
    ratio2 = np.exp(lf2 - lf1)
    inner = (second_moment(lf1) - ratio4) / m + (P / m**2) * (ratio2 - ratio4)
    # bias: SMREG - SM = Lambda (e^{lf4} - e^{s/2}) = Lambda e^{s/2} expm1(lf4 - s/2)
    with np.errstate(divide="ignore"):
        log_bias2 = -(geom.a + geom.b) + s + 2 * np.log(np.abs(np.expm1(lf4 - s / 2.0)))
    return np.logaddexp(-(geom.a + geom.b) + lf1 + log_of_nonneg(inner), log_bias2)

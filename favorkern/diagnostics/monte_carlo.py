"""Monte-Carlo mean squared error of the random-feature estimators.

The trials run the library's own feature maps (the registry's specs, evaluated by
:func:`favorkern.feature_maps.apply_feature_map`), many trials per BLAS product.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from .. import _config
from .._validation import check_float_array, check_int, check_option
from ..feature_maps import apply_feature_map, check_constants, feature_map_names, map_spec
from ._common import MC_PROJECTIONS, NORMS, check_a, check_gamma, check_pairs, check_width, output

__all__ = ["MonteCarloMSE", "empirical_mse", "draw_trials", "trials_spec", "mom_interval"]


@dataclass(frozen=True)
class MonteCarloMSE:
    """Monte-Carlo mean squared error of a random-feature kernel estimate, per pair.

    Attributes
    ----------
    mse : float or ndarray (n_pairs,)
        Mean over trials of ``(phi(x).phi(y) - k(x, y))^2``.
    se : float or ndarray
        Its standard error, ``std / sqrt(n_trials)``.  Under heavy tails (see
        :ref:`theory-heavy-tails`) both ``mse`` and ``se`` are typically *too small*.
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
    >>> result = empirical_mse(x, x, feature_map="hyperbolic", n_components=8, n_trials=500,
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


def trials_spec(fmap, draws, input_scale, constants=None, phases=None):
    """One feature map evaluating all trials of ``draws`` (``(n_trials, m, d)``) at once.

    The map's spec is built on the trial-stacked projection, which gives the outputs
    of every trial side by side (``outputs_per_projection`` blocks of
    ``n_trials * m`` columns, the layout every :class:`FeatureMap` keeps).  The stacked
    call normalizes by ``n_trials * m`` projections, a single trial by ``m``: every
    map's log-scale differs by exactly ``log(n_trials) / 2``, added back here.
    ``phases``: the map's other random draws for the stacked width (``fmap.draw``,
    e.g. one random phase per output of distinct frequencies); ``None``: none.
    """
    n_trials, m, d = draws.shape
    n_out = fmap.outputs_per_projection * n_trials * m
    if not phases:
        phases = {"offset": np.zeros(0)}
    stacked = map_spec(
        fmap,
        draws.reshape(n_trials * m, d),
        n_components=n_out,
        input_scale=input_scale,
        kernel="softmax",
        constants=constants,
        draws=phases,
    )
    return replace(stacked, log_scale=np.asarray(stacked.log_scale) + 0.5 * np.log(n_trials))


def draw_trials(n_trials, m, d, projection, norms, rng):
    """``(n_trials, m, d)`` projections, each distributed as ``draw_projection(m, d, ...)``.

    One call of :func:`favorkern.draw_projection` per chunk: for ``"orthogonal"``
    it returns independent Haar blocks with independent row norms, and each trial
    takes ``ceil(m / d)`` consecutive blocks truncated to ``m`` rows -- exactly the
    distribution of a separate ``draw_projection(m, d)`` call (last block partial).
    Quasi-Monte Carlo kinds (``"sobol"``, ``"halton"``) draw one randomized point set
    per trial: consecutive points of one sequence would make the trials dependent.
    """

    from ..projections import QMC_KINDS, draw_projection, padded_dims  # imported on use

    if projection in QMC_KINDS:
        return np.stack(
            [draw_projection(m, d, projection=projection, norms=norms, random_state=rng)
             for _ in range(n_trials)]
        )  # fmt: skip
    if projection == "gaussian":
        W = draw_projection(n_trials * m, d, projection="gaussian", norms=norms, random_state=rng)
        return W.reshape(n_trials, m, d)
    block = padded_dims(d) if projection == "structured" else d
    rows = -(-m // block) * block
    W = draw_projection(n_trials * rows, d, projection=projection, norms=norms, random_state=rng)
    return W.reshape(n_trials, rows, d)[:, :m]


def mom_interval(group_means, confidence=0.95):
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
    feature_map,
    n_components,
    projection="orthogonal",
    norms="chi",
    gamma=1.0,
    n_trials=1000,
    n_groups=20,
    projections=None,
    A=None,
    constants=None,
    random_state=None,
):
    """Monte-Carlo MSE of the random-feature estimate of ``exp(gamma x.y)``.

    Each trial draws a projection with :func:`favorkern.draw_projection`, and the
    feature map is the registered map the transformers use, evaluated by the same
    :func:`favorkern.feature_maps.apply_feature_map`;
    a chunk of trials is stacked into one projection, so it costs one BLAS product
    and one vectorized ``exp``/``cos`` (the normalization is the single trial's).

    Parameters
    ----------
    x, y : array-like of shape (d,) or (n_pairs, d)
        The pairs (broadcast against each other).
    feature_map : str or FeatureMap
        Any registered map that estimates the softmax kernel (including maps
        registered by user code).
    n_components : int
        Output width per trial, as in :func:`theoretical_mse` (a multiple of the
        map's outputs per projection).
    projection : {"gaussian", "orthogonal", "simplex", "structured", "sobol", "halton"}, \
default="orthogonal"
        Projection kind (``"structured"``: SORF; ``"sobol"``, ``"halton"``: randomized
        quasi-Monte Carlo; none of these three has a closed form).
    norms : {"chi", "fixed"}, default="chi"
        Row norms (see :func:`favorkern.draw_projection`).
    gamma : float, default=1.0
        Kernel scale, > 0.
    n_trials : int, default=1000
        Independent projections.  Memory is ``O(n_pairs * n_trials)`` plus bounded
        chunks.
    n_groups : int, default=20
        Groups for the median of means (at most ``n_trials``).
    projections : ndarray of shape (n_trials, m, d), optional
        Use these draws instead of drawing (e.g. to reuse one set of draws for
        several feature maps, or to test another projection scheme).
        ``projection`` and ``norms`` are then ignored; ``random_state`` still seeds
        the random phases of maps that draw them (distinct frequencies).
    A : float or None, default=None
        GERF parameter of ``feature_map="optimal"``.  ``None``: maps with data
        constants fit them on each pair by themselves (for ``"optimal"`` the pair's own
        ``A*``, as :func:`theoretical_mse` takes it), on the same draws.
    constants : dict or None, default=None
        Fitted data constants (the map's ``fit``, as :func:`theoretical_mse` takes
        them), the same for every pair; give either ``A`` or ``constants``.
    random_state : int, RandomState instance or None, default=None
        Seed of the draws.

    Returns
    -------
    result : MonteCarloMSE
        MSE, standard error, median of means with its interval, mean estimate.

    Notes
    -----
    A deterministic map (``"taylor"``) gives the same estimate on every draw: its
    ``mse`` is the exact squared error, with ``se = 0``.

    For exp-type features a single projection's squared error has kurtosis of
    order ``e^{4 |z|^2}`` (:ref:`theory-heavy-tails`): trust ``mse +- se`` only where
    ``e^{4 |z|^2} / m`` is moderate; elsewhere prefer :func:`theoretical_mse` and
    read the median-of-means interval as a robust lower-side summary.

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import empirical_mse, theoretical_mse
    >>> x = np.array([0.3, 0.1, 0.0, 0.2])
    >>> y = np.array([0.1, -0.2, 0.3, 0.0])
    >>> mc = empirical_mse(x, y, feature_map="positive", n_components=8, n_trials=4000,
    ...                    random_state=0)
    >>> exact = theoretical_mse(x, y, feature_map="positive", n_components=8)
    >>> bool(abs(mc.mse - exact) < 4.5 * mc.se)
    True
    """
    from sklearn.utils import check_random_state

    x, y, scalar = check_pairs(x, y)
    fmap, m = check_width(feature_map, n_components)
    if fmap.fit_takes_projection:
        raise ValueError(
            f"feature_map={fmap.name!r} fits its projection to data, so a Monte-Carlo "
            "estimate over random projections does not apply; maps with random "
            f"projections: {list(feature_map_names(random=True))}"
        )
    if "softmax" not in fmap.kernels:
        raise ValueError(
            f"feature_map={fmap.name!r} does not estimate the softmax kernel exp(gamma x.y)"
        )
    check_option(projection, "projection", MC_PROJECTIONS)
    check_option(norms, "norms", NORMS)
    gamma = check_gamma(gamma)
    A = check_a(A)
    n, d = x.shape
    if getattr(fmap, "deterministic", False):
        n_trials = check_int(n_trials, "n_trials", min_value=2)
        return _as_output(
            _deterministic(
                x,
                y,
                fmap,
                m,
                gamma,
                min(check_int(n_groups, "n_groups"), n_trials),
                n_trials,
                constants,
            ),  # fmt: skip
            scalar,
        )
    stacked = getattr(fmap, "stacked_trials", True)
    rows = m if stacked else fmap.n_projections(n_components)
    if projections is not None:
        projections = np.asarray(projections)
        if projections.dtype.kind not in "iuf":
            raise TypeError(f"projections must be a numeric array, got dtype {projections.dtype}")
        if projections.ndim != 3 or projections.shape[1:] != (rows, d):
            raise ValueError(
                f"projections must have shape (n_trials, {rows}, {d}) for n_components="
                f"{n_components} and d={d}, got {projections.shape}"
            )
        n_trials = projections.shape[0]
    n_trials = check_int(n_trials, "n_trials", min_value=2)  # a spread needs two
    n_groups = min(check_int(n_groups, "n_groups"), n_trials)
    rng = check_random_state(random_state)

    if not stacked:
        if projections is None:
            projections = draw_trials(n_trials, rows, d, projection, norms, rng)
        constants = check_constants(fmap, constants, d) if fmap.data_constants else {}
        return _as_output(
            _per_trial(x, y, fmap, n_components, gamma, n_groups, projections, constants),
            scalar,
        )
    run = partial(_empirical, fmap=fmap, m=m, gamma=gamma, n_groups=n_groups, rng=rng,
                  projection=projection, norms=norms, n_trials=n_trials)  # fmt: skip
    if constants is not None:
        if A is not None:
            raise ValueError("give the GERF parameter as A or in constants, not both")
        constants = check_constants(fmap, constants, x.shape[1])
        return _as_output(run(x, y, projections=projections, constants=constants), scalar)
    if not fmap.data_constants:
        return _as_output(run(x, y, projections=projections, constants=None), scalar)
    if A is not None and fmap.data_constants == ("A",):
        return _as_output(run(x, y, projections=projections, constants={"A": A}), scalar)
    # Each pair at its own fitted constants; pairs with equal constants share one run.
    per_pair = [fmap.fit(x[i : i + 1], y[i : i + 1], input_scale=np.sqrt(gamma)) for i in range(n)]
    groups = {}
    for i, constants in enumerate(per_pair):
        key = str([np.ravel(constants[k]).tolist() for k in fmap.data_constants])
        groups.setdefault(key, []).append(i)
    if len(groups) == 1:
        return _as_output(run(x, y, projections=projections, constants=per_pair[0]), scalar)
    if projections is None:  # common draws for every group
        projections = draw_trials(n_trials, m, d, projection, norms, rng)
    parts = []
    for idx in map(np.asarray, groups.values()):
        parts.append(
            (idx, run(x[idx], y[idx], projections=projections, constants=per_pair[idx[0]]))
        )
    fields = {}
    for name in _PER_PAIR:
        values = np.empty(n)
        for idx, part in parts:
            values[idx] = getattr(part, name)
        fields[name] = output(values, scalar)
    return MonteCarloMSE(
        **fields, mom_coverage=parts[0][1].mom_coverage, n_trials=n_trials, n_groups=n_groups
    )


# Fields of MonteCarloMSE with one value per pair.
_PER_PAIR = ("mse", "se", "mom", "mom_low", "mom_high", "mean", "mean_se", "kernel")


def _as_output(result, scalar):
    """``result`` with floats instead of one-element arrays when the input was one pair."""
    if not scalar:
        return result
    return replace(result, **{name: output(getattr(result, name), True) for name in _PER_PAIR})


def _deterministic(x, y, fmap, m, gamma, n_groups, n_trials, constants) -> MonteCarloMSE:
    """The exact error of a deterministic map (every trial gives the same estimate)."""
    from ..projections import draw_projection

    constants = check_constants(fmap, constants, x.shape[1]) if fmap.data_constants else {}
    kernel = np.exp(gamma * np.einsum("ij,ij->i", x, y))
    W = draw_projection(fmap.n_projections(m), x.shape[1], projection="gaussian", random_state=0)
    spec = fmap.spec(W, n_components=m * fmap.outputs_per_projection,
                     input_scale=float(np.sqrt(gamma)), constants=constants)  # fmt: skip
    phi = apply_feature_map(np.ascontiguousarray(np.concatenate([x, y])), spec)
    estimate = np.einsum("ij,ij->i", phi[: x.shape[0]], phi[x.shape[0] :])
    mse = (estimate - kernel) ** 2
    zero = np.zeros_like(mse)
    return MonteCarloMSE(mse=mse, se=zero, mom=mse, mom_low=mse, mom_high=mse, mom_coverage=1.0,
                         mean=estimate, mean_se=zero, kernel=kernel, n_trials=n_trials,
                         n_groups=n_groups)  # fmt: skip


def _per_trial(x, y, fmap, n_components, gamma, n_groups, projections, constants):
    """Monte Carlo one trial at a time, queries and keys prepared apart (maps whose
    trials cannot be stacked into one projection, :attr:`stacked_trials`)."""
    n = x.shape[0]
    kernel = np.exp(gamma * np.einsum("ij,ij->i", x, y))
    px = np.ascontiguousarray(fmap.prepare(x, "query", constants))
    py = np.ascontiguousarray(fmap.prepare(y, "key", constants))
    estimates = np.empty((n, projections.shape[0]))
    for t, W in enumerate(projections):
        spec = fmap.spec(np.ascontiguousarray(W, dtype=np.float64), n_components=n_components,
                         input_scale=float(np.sqrt(gamma)), constants=constants)  # fmt: skip
        estimates[:, t] = np.einsum("ij,ij->i", apply_feature_map(px, spec),
                                    apply_feature_map(py, spec))  # fmt: skip
    return _summary(estimates, kernel, n_groups)


def _summary(estimates, kernel, n_groups) -> MonteCarloMSE:
    """The :class:`MonteCarloMSE` of ``estimates`` (pairs x trials) of ``kernel``."""
    n, n_trials = estimates.shape
    squared = (estimates - kernel[:, None]) ** 2
    groups = np.array_split(squared, n_groups, axis=1)
    mom, low, high, coverage = mom_interval(np.stack([g.mean(axis=1) for g in groups], axis=1))
    return MonteCarloMSE(
        mse=squared.mean(axis=1),
        se=squared.std(axis=1, ddof=1) / np.sqrt(n_trials),
        mom=mom, mom_low=low, mom_high=high, mom_coverage=coverage,
        mean=estimates.mean(axis=1),
        mean_se=estimates.std(axis=1, ddof=1) / np.sqrt(n_trials),
        kernel=kernel, n_trials=n_trials, n_groups=n_groups,
    )  # fmt: skip


def _empirical(x, y, *, fmap, m, gamma, n_groups, projections, constants, rng, projection, norms,
               n_trials) -> MonteCarloMSE:  # fmt: skip
    """The Monte Carlo of :func:`empirical_mse` for one set of constants (arrays out)."""
    n, d = x.shape
    input_scale = float(np.sqrt(gamma))
    per = fmap.outputs_per_projection
    kernel = np.exp(gamma * np.einsum("ij,ij->i", x, y))
    if constants:
        x, y = fmap.prepare(x, "query", constants), fmap.prepare(y, "key", constants)
    points = np.ascontiguousarray(np.concatenate([x, y], axis=0))
    n_out = per * m
    if projections is not None:
        n_trials = projections.shape[0]
    # per trial: 2n x n_out features plus the n_out x d stacked weights (and a transpose)
    chunk = max(1, min(n_trials, _config.MONTE_CARLO_CHUNK_ELEMENTS // (n_out * (2 * n + 2 * d))))
    estimates = np.empty((n, n_trials), dtype=np.float64)
    for lo in range(0, n_trials, chunk):
        hi = min(n_trials, lo + chunk)
        if projections is None:
            draws = draw_trials(hi - lo, m, d, projection, norms, rng)
        else:
            draws = check_float_array(projections[lo:hi], "projections", dtype=np.float64)
        # the map's own random draws (phases), made after the projection as a transformer's
        phases = fmap.draw(n_out * (hi - lo), rng)
        spec = trials_spec(fmap, np.ascontiguousarray(draws), input_scale, constants, phases)
        # columns: n_halves blocks, each (trials, m) -> (points, halves, trials, m)
        phi = apply_feature_map(points, spec).reshape(2 * n, n_out // m, hi - lo, m)
        estimates[:, lo:hi] = np.einsum("phtj,phtj->pt", phi[:n], phi[n:])

    errors = estimates - kernel[:, None]
    squared = errors**2
    mse = squared.mean(axis=1)
    se = squared.std(axis=1, ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.full(n, np.nan)
    groups = np.array_split(squared, n_groups, axis=1)
    group_means = np.stack([g.mean(axis=1) for g in groups], axis=1)
    mom, low, high, coverage = mom_interval(group_means)
    mean = estimates.mean(axis=1)
    mean_se = (
        estimates.std(axis=1, ddof=1) / np.sqrt(n_trials) if n_trials > 1 else np.full(n, np.nan)
    )
    return MonteCarloMSE(
        mse=mse,
        se=se,
        mom=mom,
        mom_low=low,
        mom_high=high,
        mom_coverage=coverage,
        mean=mean,
        mean_se=mean_se,
        kernel=kernel,
        n_trials=n_trials,
        n_groups=n_groups,
    )

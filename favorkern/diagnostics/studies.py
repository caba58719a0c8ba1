"""Studies over estimators, projections and widths: tidy tables for plots and reports."""

from __future__ import annotations

import numpy as np

from .._validation import check_float_array, check_int, check_option
from ..feature_maps import feature_map_names, get_feature_map
from ._common import (
    MC_PROJECTIONS,
    NORMS,
    PROJECTIONS,
    check_gamma,
    check_pairs,
    check_width,
    parse_options,
    parse_sizes,
)
from .closed_forms import theoretical_mse
from .monte_carlo import draw_trials, empirical_mse

__all__ = ["default_pairs", "variance_study", "study_summary", "convergence"]

# (name, norm l of both vectors, angle between them): small/moderate |z|^2 so that the
# Monte Carlo is trustworthy at a few thousand trials (:ref:`theory-heavy-tails`), and angles from
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


def _has_closed_form(fmap, projection, norms):
    """Whether :func:`theoretical_mse` covers this combination."""
    return fmap.has_closed_form and projection in fmap.closed_form_projections(norms)


def variance_study(
    x=None,
    y=None,
    *,
    pair_names=None,
    n_dims=16,
    n_components=(16, 32, 64, 128, 256),
    feature_maps=("positive", "hyperbolic", "trigonometric", "optimal"),
    projection=PROJECTIONS,
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
    n_components : int or sequence of int, default=(16, 32, 64, 128, 256)
        Output widths (even, for the paired maps): every map is compared at the same
        width, i.e. the same cost of the features.
    feature_maps : str or sequence of str, default=("positive", "hyperbolic", \
"trigonometric", "optimal")
        Registered maps that estimate the softmax kernel; ``"optimal"`` runs each
        pair at its own ``A*``.
    projection : str or sequence of str, default=("gaussian", "orthogonal", "simplex")
        ``"structured"`` (SORF) may be added; it has no closed form, so its
        ``theoretical_mse`` is NaN (as for trigonometric features with simplex blocks).
    norms : {"chi", "fixed"}, default="chi"
    gamma : float, default=1.0
    n_trials : int, default=2000
        Monte-Carlo trials per (projection, width); the draws are shared by the
        feature maps (common random numbers, which sharpens their comparison: a
        paired map takes the first half of the rows).
    random_state : int, RandomState instance or None, default=0
    progress : callable, optional
        ``progress(iterable, total=..., desc=...)`` wrapping the loop over
        (projection, width), e.g. ``tqdm``.

    Returns
    -------
    study : pandas.DataFrame
        One row per (feature_map, projection, n_components, pair) with columns
        ``feature_map, projection, n_components, pair, norm_x, norm_y, angle, kernel,
        empirical_mse, se, mom, mom_low, mom_high, theoretical_mse, ratio, z``
        where ``ratio = empirical_mse / theoretical_mse`` and
        ``z = (empirical_mse - theoretical_mse) / se``; both are NaN where the
        closed-form MSE is exactly 0 (the estimator is exact there, e.g. positive
        features at ``y = -x``, and the Monte-Carlo MSE is rounding noise).

    Examples
    --------
    >>> from favorkern.diagnostics import variance_study
    >>> study = variance_study(n_components=[8], feature_maps="positive", n_trials=200)
    >>> study.shape
    (12, 16)
    >>> sorted(study["projection"].unique())
    ['gaussian', 'orthogonal', 'simplex']
    """
    import pandas as pd
    from sklearn.utils import check_random_state

    x, y, pair_names = _study_pairs(x, y, pair_names, n_dims)
    sizes = parse_sizes(n_components, "n_components")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"n_components must not repeat a width, got {sizes}")
    kinds = parse_options(
        feature_maps, "feature_maps", feature_map_names(kernel="softmax", random=True)
    )
    maps = {kind: get_feature_map(kind) for kind in kinds}
    for kind in kinds:
        for size in sizes:
            check_width(kind, size)
    schemes = parse_options(projection, "projection", MC_PROJECTIONS)
    check_option(norms, "norms", NORMS)
    gamma = check_gamma(gamma)
    n_trials = check_int(n_trials, "n_trials", min_value=2)
    rng = check_random_state(random_state)

    geometry = _pair_columns(x, y, pair_names)
    jobs = [(scheme, width) for scheme in schemes for width in sizes]
    loop = jobs if progress is None else progress(jobs, total=len(jobs), desc="variance")
    frames = []
    for scheme, width in loop:
        # common random numbers: every map takes the first rows of the same draws
        draws = draw_trials(n_trials, width, x.shape[1], scheme, norms, rng)
        for fmap in maps.values():
            frame = _study_rows(x, y, fmap, width, scheme, norms, gamma, draws)
            frames.append(pd.concat([geometry, frame], axis=1))
    study = pd.concat(frames, ignore_index=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        study["ratio"] = study["empirical_mse"] / study["theoretical_mse"]
        study["z"] = (study["empirical_mse"] - study["theoretical_mse"]) / study["se"]
    exact = study["theoretical_mse"] == 0
    study.loc[exact, ["ratio", "z"]] = np.nan
    # deterministic maps (taylor): no spread, the "Monte Carlo" is the exact error
    study.loc[study["se"] == 0, "z"] = np.nan
    columns = ["feature_map", "projection", "n_components", "pair", "norm_x", "norm_y", "angle"]
    return study[columns + [c for c in study.columns if c not in columns]]


def _study_pairs(x, y, pair_names, n_dims):
    """Checked pairs (the default pairs when neither is given) and their names."""
    if x is None and y is None:
        x, y, default_names = default_pairs(n_dims)
    elif x is None or y is None:
        raise ValueError("x and y must both be given, or neither (for the default pairs)")
    else:
        default_names = None
    x, y, _ = check_pairs(x, y)
    n = x.shape[0]
    if pair_names is None:
        pair_names = default_names or [f"pair{i}" for i in range(n)]
    pair_names = [str(p) for p in pair_names]
    if len(pair_names) != n:
        raise ValueError(f"pair_names must have {n} entries (one per pair), got {len(pair_names)}")
    return x, y, pair_names


def _pair_columns(x, y, pair_names):
    """``pair, norm_x, norm_y, angle`` of each pair."""
    import pandas as pd

    norm_x = np.linalg.norm(x, axis=1)
    norm_y = np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.clip(np.einsum("ij,ij->i", x, y) / (norm_x * norm_y), -1.0, 1.0)
    return pd.DataFrame(
        {"pair": pair_names, "norm_x": norm_x, "norm_y": norm_y, "angle": np.arccos(cosine)}
    )


def _study_rows(x, y, fmap, width, projection, norms, gamma, draws):
    """Monte Carlo (on the shared ``draws``) and closed form of one map at one width."""
    import pandas as pd

    m = width // fmap.outputs_per_projection
    if not getattr(fmap, "stacked_trials", True):
        m = fmap.n_projections(width)  # maps that read their own layout of rows
    mc = empirical_mse(
        x, y, feature_map=fmap, n_components=width, gamma=gamma, projections=draws[:, :m]
    )
    if _has_closed_form(fmap, projection, norms) and set(fmap.data_constants) - {"A"}:
        # The Monte Carlo fits each pair's own constants; so does the closed form.
        theory = np.array([
            theoretical_mse(
                x[i], y[i], feature_map=fmap, n_components=width, projection=projection,
                norms=norms, gamma=gamma,
                constants=fmap.fit(x[i : i + 1], y[i : i + 1], input_scale=np.sqrt(gamma)),
            )
            for i in range(x.shape[0])
        ])  # fmt: skip
    elif _has_closed_form(fmap, projection, norms):
        theory = theoretical_mse(
            x, y, feature_map=fmap, n_components=width, projection=projection, norms=norms,
            gamma=gamma,
        )  # fmt: skip
    else:
        theory = np.full(x.shape[0], np.nan)
    return pd.DataFrame(
        {
            "feature_map": fmap.name,
            "projection": projection,
            "n_components": width,
            "kernel": mc.kernel,
            "empirical_mse": mc.mse,
            "se": mc.se,
            "mom": mc.mom,
            "mom_low": mc.mom_low,
            "mom_high": mc.mom_high,
            "theoretical_mse": theory,
        }
    )


def study_summary(study):
    """One row per (pair, feature_map, projection) of a :func:`variance_study` frame.

    Columns ``pair, norm, angle_deg, feature_map, projection, rel_mse_n<lo>,
    rel_mse_n<hi>`` (closed-form MSE / k(x, y)^2 at the smallest and largest width),
    ``ratio_min, ratio_max`` (Monte Carlo / closed form over the widths) and
    ``max_abs_z``.  Shared by ``favorkern variance`` and ``favorkern report``.

    Examples
    --------
    >>> from favorkern.diagnostics import study_summary, variance_study
    >>> study = variance_study(n_components=[8, 16], feature_maps="positive",
    ...                        projection="gaussian", n_trials=200)
    >>> list(study_summary(study).columns[:5])
    ['pair', 'norm', 'angle_deg', 'feature_map', 'projection']
    """
    import pandas as pd

    rows = []
    m_lo, m_hi = study["n_components"].min(), study["n_components"].max()
    for (pair, kind, scheme), group in study.groupby(
        ["pair", "feature_map", "projection"], sort=False
    ):
        group = group.set_index("n_components")
        k2 = group["kernel"].iloc[0] ** 2
        finite = group["z"].replace([np.inf, -np.inf], np.nan).dropna()
        ratios = group["ratio"].replace([np.inf, -np.inf], np.nan).dropna()
        rows.append(
            {
                "pair": pair,
                "norm": group["norm_x"].iloc[0],
                "angle_deg": float(np.degrees(group["angle"].iloc[0])),
                "feature_map": kind,
                "projection": scheme,
                f"rel_mse_n{m_lo}": group.loc[m_lo, "theoretical_mse"] / k2,
                f"rel_mse_n{m_hi}": group.loc[m_hi, "theoretical_mse"] / k2,
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
    feature_map="positive",
    n_components=(16, 32, 64, 128, 256, 512),
    projection="orthogonal",
    gamma=1.0,
    n_repeats=3,
    random_state=None,
):
    """Uniform convergence of the approximate kernel matrix as the width grows.

    For each width and repeat, fits :class:`favorkern.RandomFeatures` and compares
    ``phi(X) phi(Y)^T`` with ``exp(gamma X Y^T)`` over all entries: the quantity of
    Performer Theorem 4 (:ref:`theory-uniform-convergence`), where the width needed for a given
    max-error grows like ``exp(2 R^2)`` with the largest norm ``R``.

    Parameters
    ----------
    X : array-like of shape (n_samples_X, d)
    Y : array-like of shape (n_samples_Y, d), optional
        Default ``X``.
    feature_map : str or FeatureMap, default="positive"
        A registered map with a closed form for the softmax kernel
        (``"positive"``, ``"hyperbolic"``, ``"trigonometric"``, ``"optimal"``, and the
        fitted ``"saderf"``; ``"sderf"`` and ``"aderf"`` with ``"gaussian"``); data
        constants are fitted on ``X``, as the transformer fits them.
    n_components : int or sequence of int, default=(16, 32, 64, 128, 256, 512)
        Output widths (even, for the paired maps).
    projection : {"orthogonal", "gaussian", "simplex"}, default="orthogonal"
        A projection with a closed form for the map.
    gamma : float, default=1.0
    n_repeats : int, default=3
        Independent projections per width.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    errors : pandas.DataFrame
        Columns ``n_components, repeat, max_rel_error, mean_rel_error, max_abs_error,
        mean_abs_error`` and ``theoretical_rel_rmse`` (the closed-form root-mean
        relative error averaged over entries, the same for every repeat).

    Examples
    --------
    >>> import numpy as np
    >>> from favorkern.diagnostics import convergence
    >>> X = np.random.default_rng(0).normal(scale=0.2, size=(30, 8))
    >>> errors = convergence(X, n_components=[16, 256], n_repeats=2, random_state=0)
    >>> means = errors.groupby("n_components")["mean_rel_error"].mean()
    >>> bool(means[256] < means[16])
    True
    """
    import pandas as pd
    from sklearn.utils import check_random_state

    from ..features import RandomFeatures

    X = check_float_array(X, "X", ndim=2, dtype=np.float64)
    Y = X if Y is None else check_float_array(Y, "Y", ndim=2, dtype=np.float64)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of columns, got {X.shape[1]} and {Y.shape[1]}"
        )
    fmap = get_feature_map(feature_map)
    check_option(projection, "projection", PROJECTIONS)
    if not _has_closed_form(fmap, projection, "chi"):
        raise ValueError(
            f"feature_map={fmap.name!r} has no closed form with projection={projection!r}"
        )
    sizes = parse_sizes(n_components, "n_components")
    for size in sizes:
        check_width(fmap, size)
    gamma = check_gamma(gamma)
    n_repeats = check_int(n_repeats, "n_repeats")
    rng = check_random_state(random_state)
    # One set of data constants fitted on X (as the transformer does); the closed form
    # uses them too.
    constants = fmap.fit(X, input_scale=np.sqrt(gamma))

    # Relative errors from the log of the exact kernel: finite where exp(gamma x.y)
    # itself overflows or underflows float64.
    log_exact = gamma * (X @ Y.T)
    with np.errstate(over="ignore"):
        exact = np.exp(log_exact)
    xi = np.repeat(X, Y.shape[0], axis=0)
    yj = np.tile(Y, (X.shape[0], 1))
    rows = []
    for width in sizes:
        log_theory = theoretical_mse(
            xi, yj, feature_map=fmap, n_components=width, projection=projection, gamma=gamma,
            constants=constants or None, log=True,
        )  # fmt: skip
        with np.errstate(over="ignore", under="ignore"):
            rel_rmse = float(np.mean(np.exp(0.5 * log_theory - log_exact.ravel())))
        for repeat in range(n_repeats):
            mapper = RandomFeatures(
                fmap, width, gamma=gamma, projection=projection, random_state=rng
            ).fit(X)
            approx = mapper.transform(X) @ mapper.transform(Y).T
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                abs_error = np.abs(approx - exact)
                ratio = np.sign(approx) * np.exp(np.log(np.abs(approx)) - log_exact)
            rel_error = np.abs(ratio - 1.0)
            rows.append(
                {
                    "n_components": width,
                    "repeat": repeat,
                    "max_rel_error": float(rel_error.max()),
                    "mean_rel_error": float(rel_error.mean()),
                    "max_abs_error": float(abs_error.max()),
                    "mean_abs_error": float(abs_error.mean()),
                    "theoretical_rel_rmse": rel_rmse,
                }
            )
    return pd.DataFrame(rows)

"""The runs behind the report: each function returns tables and numbers, never a figure.

One function per job (and per table of a job), through the library's public functions:
:func:`variance_tables` (:func:`favorkern.diagnostics.variance_study`),
:func:`attention_timing` and :func:`attention_error_study` (exact softmax attention
against :class:`favorkern.FavorAttention`, :func:`favorkern.diagnostics.attention_error`),
:func:`regression_tables` (:func:`favorkern.regression.compare_regression`).  The
figures are drawn by :mod:`favorkern.plotting`, the page by :mod:`favorkern.report.render`.

pandas is imported inside the functions that need it.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

__all__ = [
    "ATTENTION_N_COMPONENTS",
    "ATTENTION_SIGMA",
    "ERROR_DIMS",
    "ERROR_SIGMAS",
    "ERROR_FEATURE_MAPS",
    "ERROR_PROJECTIONS",
    "Z_LIMIT",
    "with_progress",
    "best_time",
    "variance_tables",
    "z_agreement",
    "most_accurate",
    "attention_timing",
    "attention_error_study",
    "regression_tables",
    "regression_highlights",
]

#: Output width of the timed FAVOR+ layer: the Performer's default for d = 64 heads.
ATTENTION_N_COMPONENTS = 256
#: Standard deviation of the timed inputs: softmax logits of order one, as after layer norm.
ATTENTION_SIGMA = 0.5
#: Dimension of the error-against-width study (:ref:`theory-fig4`).
ERROR_DIMS = 16
#: Query/key scales of that study: small norms, where every map converges, and larger
#: ones, where the trigonometric normalizer can vanish.
ERROR_SIGMAS = (0.5, 1.0)
#: Feature maps and projections compared in that study, in legend order.
ERROR_FEATURE_MAPS = ("positive", "trigonometric")
ERROR_PROJECTIONS = ("orthogonal", "gaussian")
#: A Monte-Carlo MSE within this many standard errors agrees with its closed form: for
#: a few hundred normal z-scores, |z| > 4.5 has a chance of about 1e-3.
Z_LIMIT = 4.5
# The error study's inputs are seeded from this offset, apart from the projections'
# seeds 0, 1, ... so that inputs and projections never share a stream.
_INPUT_SEED_OFFSET = 1000
# best_time: keep timing a fast call until this many seconds are spent, in at most
# this many runs (a single run of a sub-millisecond call is mostly timer noise).
_MIN_TIMED_SECONDS = 0.2
_MAX_TIMED_RUNS = 50


def with_progress(progress, iterable, total, desc):
    """``progress(iterable, total=total, desc=desc)``, or ``iterable`` if ``progress`` is None.

    Examples
    --------
    >>> from favorkern.report.compute import with_progress
    >>> list(with_progress(None, range(3), 3, "demo"))
    [0, 1, 2]
    """
    return iterable if progress is None else progress(iterable, total=total, desc=desc)


def best_time(fn, repeats, *, min_seconds=_MIN_TIMED_SECONDS, max_runs=_MAX_TIMED_RUNS):
    """Fastest of at least ``repeats`` runs of ``fn()`` (more, up to ``max_runs``, for fast calls).

    The minimum, not the median: on a shared machine the other processes only ever
    add time, and multithreaded BLAS on small products can stall for tens of ms.

    Parameters
    ----------
    fn : callable
        Called without arguments; once more before timing (warm-up).
    repeats : int
        Least number of timed runs.
    min_seconds : float, default=0.2
        Keep running until the timed runs add up to this many seconds ...
    max_runs : int, default=50
        ... or this many runs.

    Returns
    -------
    seconds : float

    Examples
    --------
    >>> from favorkern.report.compute import best_time
    >>> 0 < best_time(lambda: sum(range(1000)), 3, min_seconds=0.0)
    True
    """
    fn()  # warm-up: thread pool, numba cache load, first touch of buffers
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- variance -----------------------------------------------------------------------


def variance_tables(config, *, progress=None):
    """The variance study and its summary, one row per pair.

    Parameters
    ----------
    config : ReportConfig
        Uses ``variance_dims``, ``variance_n_components``, ``variance_trials``,
        ``variance_estimators``, ``variance_projections`` and ``seed``.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the study's loop.

    Returns
    -------
    study : pandas.DataFrame
        The output of :func:`favorkern.diagnostics.variance_study`.
    summary : pandas.DataFrame
        :func:`favorkern.diagnostics.study_summary` with the report's column names:
        the relative MSE at the smallest and largest width and the largest ``|z|``.

    Examples
    --------
    >>> from dataclasses import replace
    >>> from favorkern.report import PRESETS
    >>> from favorkern.report.compute import variance_tables
    >>> study, summary = variance_tables(replace(PRESETS["tiny"], variance_trials=20))
    >>> list(summary.columns[-3:])
    ['rel. MSE, n=4', 'rel. MSE, n=16', 'max |z|']
    """
    from ..diagnostics import study_summary, variance_study

    study = variance_study(
        n_dims=config.variance_dims,
        n_components=config.variance_n_components,
        n_trials=config.variance_trials,
        feature_maps=config.variance_estimators,
        projection=config.variance_projections,
        random_state=config.seed,
        progress=progress,
    )
    m_lo, m_hi = min(config.variance_n_components), max(config.variance_n_components)
    summary = study_summary(study)
    summary["angle_deg"] = summary["angle_deg"].round().astype(int)
    summary = summary.rename(
        columns={
            "norm": "|x| = |y|",
            "angle_deg": "angle (deg)",
            f"rel_mse_n{m_lo}": f"rel. MSE, n={m_lo}",
            f"rel_mse_n{m_hi}": f"rel. MSE, n={m_hi}",
            "max_abs_z": "max |z|",
        }
    ).drop(columns=["ratio_min", "ratio_max"])
    return study, summary


def z_agreement(study, *, limit=Z_LIMIT):
    """How many finite Monte-Carlo z-scores of ``study`` lie within ``limit``.

    Returns
    -------
    inside : int
    total : int
        Number of finite z-scores.
    largest : float
        Largest ``|z|`` (NaN if there is none).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from favorkern.report.compute import z_agreement
    >>> z_agreement(pd.DataFrame({"z": [0.5, -5.0, np.inf, 1.0]}))
    (2, 3, 5.0)
    """
    z = study["z"].replace([np.inf, -np.inf], np.nan).dropna().abs()
    largest = float(z.max()) if len(z) else float("nan")
    return int((z <= limit).sum()), len(z), largest


def most_accurate(study, n_components):
    """Per pair, the map and projection of lowest closed-form MSE at ``n_components``.

    Returns
    -------
    best : pandas.DataFrame
        Columns ``pair``, ``feature_map``, ``projection`` and ``relative_mse``
        (``MSE / k(x, y)^2``), in the study's order of pairs.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.report.compute import most_accurate
    >>> study = pd.DataFrame({"pair": ["a", "a"], "n_components": [8, 8],
    ...     "feature_map": ["positive", "trigonometric"], "projection": ["gaussian"] * 2,
    ...     "theoretical_mse": [0.5, 0.2], "kernel": [2.0, 2.0]})
    >>> most_accurate(study, 8).to_dict("records")
    [{'pair': 'a', 'feature_map': 'trigonometric', 'projection': 'gaussian', 'relative_mse': 0.05}]
    """
    import pandas as pd

    at_width = study[study["n_components"] == n_components]
    rows = []
    for pair, group in at_width.groupby("pair", sort=False):
        row = group.loc[group["theoretical_mse"].idxmin()]
        rows.append(
            {
                "pair": pair,
                "feature_map": row["feature_map"],
                "projection": row["projection"],
                "relative_mse": row["theoretical_mse"] / row["kernel"] ** 2,
            }
        )
    return pd.DataFrame(rows, columns=["pair", "feature_map", "projection", "relative_mse"])


# -- attention ----------------------------------------------------------------------


def _attention_inputs(rng, L, d, sigma, dtype):
    Q = (rng.standard_normal((L, d)) * sigma).astype(dtype)
    K = (rng.standard_normal((L, d)) * sigma).astype(dtype)
    V = rng.standard_normal((L, d)).astype(dtype)
    return Q, K, V


def attention_timing(config, *, progress=None):
    """Exact softmax against FAVOR+ attention, per sequence length: best times and errors.

    FAVOR+ is :class:`favorkern.FavorAttention` (positive, orthogonal,
    ``n_components = ATTENTION_N_COMPONENTS``) on float32 queries, keys and values
    with entries ``N(0, ATTENTION_SIGMA^2)`` (values ``N(0, 1)``), ``d =
    config.attention_dims``.

    Parameters
    ----------
    config : ReportConfig
        Uses ``attention_lengths``, ``attention_dims``, ``attention_repeats``, ``seed``.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the loop over lengths.

    Returns
    -------
    timing : pandas.DataFrame
        One row per length: ``L``, ``exact (ms)``, ``FAVOR+ (ms)``, ``FAVOR+ causal
        (ms)`` (best times, :func:`best_time`), ``speed-up``, ``median row error``,
        ``max row error``, ``median row error, causal``.

    Examples
    --------
    >>> from dataclasses import replace
    >>> from favorkern.report import PRESETS
    >>> from favorkern.report.compute import attention_timing
    >>> timing = attention_timing(replace(PRESETS["tiny"], attention_lengths=(64,)))
    >>> list(timing["L"]), bool(timing["median row error"].iloc[0] < 0.5)
    ([64], True)
    """
    import pandas as pd

    from ..attention import FavorAttention, softmax_attention
    from ..diagnostics import attention_error

    d, m = config.attention_dims, ATTENTION_N_COMPONENTS
    rng = np.random.default_rng(config.seed)
    layer = FavorAttention(n_components=m, random_state=config.seed)
    repeats = config.attention_repeats
    rows = []
    lengths = list(config.attention_lengths)
    for L in with_progress(progress, lengths, len(lengths), "attention: speed"):
        Q, K, V = _attention_inputs(rng, L, d, ATTENTION_SIGMA, np.float32)
        t_exact = best_time(partial(softmax_attention, Q, K, V), repeats)
        t_bidir = best_time(partial(layer, Q, K, V), repeats)
        t_causal = best_time(partial(layer, Q, K, V, causal=True), repeats)
        errors = attention_error(Q, K, V, n_components=m, projection_matrix=layer.projection_)
        causal_errors = attention_error(
            Q, K, V, causal=True, n_components=m, projection_matrix=layer.projection_
        )
        rows.append(
            {
                "L": L,
                "exact (ms)": 1e3 * t_exact,
                "FAVOR+ (ms)": 1e3 * t_bidir,
                "FAVOR+ causal (ms)": 1e3 * t_causal,
                "speed-up": t_exact / t_bidir,
                "median row error": float(np.median(errors)),
                "max row error": float(np.max(errors)),
                "median row error, causal": float(np.median(causal_errors)),
            }
        )
    return pd.DataFrame(rows)


def attention_error_study(config, *, progress=None):
    """Median row error of FAVOR+ attention against the output width (Performer Fig. 4).

    ``L = config.attention_error_length`` tokens, ``d = ERROR_DIMS``, queries and keys
    with entries ``N(0, sigma^2)`` for each ``sigma`` in ``ERROR_SIGMAS``, every map of
    ``ERROR_FEATURE_MAPS`` with every projection of ``ERROR_PROJECTIONS``, float64.

    Parameters
    ----------
    config : ReportConfig
        Uses ``attention_error_length``, ``attention_error_n_components`` and
        ``attention_error_seeds`` (seed ``s`` draws both the inputs and the projection).
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the loop over
        (sigma, map, projection).

    Returns
    -------
    errors : pandas.DataFrame
        One row per run: ``sigma``, ``feature_map``, ``projection``,
        ``n_components``, ``seed``, ``median_row_error``.

    Examples
    --------
    >>> from dataclasses import replace
    >>> from favorkern.report import PRESETS
    >>> from favorkern.report.compute import attention_error_study
    >>> config = replace(PRESETS["tiny"], attention_error_length=32)
    >>> errors = attention_error_study(config)
    >>> len(errors), sorted(set(errors["n_components"]))
    (16, [8, 32])
    """
    import pandas as pd

    from ..diagnostics import attention_error

    combos = [
        (sigma, kind, scheme)
        for sigma in ERROR_SIGMAS
        for kind in ERROR_FEATURE_MAPS
        for scheme in ERROR_PROJECTIONS
    ]
    rows = []
    widths = list(config.attention_error_n_components)
    for sigma, kind, scheme in with_progress(progress, combos, len(combos), "attention: error"):
        for seed in range(config.attention_error_seeds):
            inputs = _attention_inputs(
                np.random.default_rng(_INPUT_SEED_OFFSET + seed),
                config.attention_error_length,
                ERROR_DIMS,
                sigma,
                np.float64,
            )
            for width in widths:
                errors = attention_error(
                    *inputs,
                    n_components=width,
                    feature_map=kind,
                    projection=scheme,
                    random_state=seed,
                )
                rows.append(
                    {
                        "sigma": sigma,
                        "feature_map": kind,
                        "projection": scheme,
                        "n_components": width,
                        "seed": seed,
                        "median_row_error": float(np.median(errors)),
                    }
                )
    return pd.DataFrame(rows)


# -- regression ---------------------------------------------------------------------


def regression_tables(config, *, progress=None):
    """Every regression method at every width on ``config.regression_data``.

    Parameters
    ----------
    config : ReportConfig
        Uses ``regression_data``, ``regression_n_components``,
        ``regression_cv_samples``, ``regression_repeats`` and ``seed``.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the fits.

    Returns
    -------
    results : pandas.DataFrame
        The output of :func:`favorkern.regression.compare_regression` (one row per
        fit; ``results.attrs`` holds ``gamma``, ``alpha``, the row counts, ...).
    summary : pandas.DataFrame
        :func:`favorkern.regression.summarize_regression` of it.
    name : str
        The data set's description.

    Examples
    --------
    >>> from dataclasses import replace
    >>> from favorkern.report import PRESETS
    >>> from favorkern.report.compute import regression_tables
    >>> config = replace(PRESETS["tiny"], regression_n_components=(16,))
    >>> results, summary, name = regression_tables(config)
    >>> name, list(summary["method"])[0]
    ('diabetes (n=442, d=10)', 'KernelRidge (exact)')
    """
    from ..datasets import load_dataset
    from ..regression import compare_regression, summarize_regression

    X, y, name = load_dataset(config.regression_data, random_state=config.seed)
    results = compare_regression(
        X,
        y,
        n_components=config.regression_n_components,
        cv_samples=config.regression_cv_samples,
        n_repeats=config.regression_repeats,
        random_state=config.seed,
        progress=progress,
    )
    return results, summarize_regression(results), name


def regression_highlights(summary, *, width, methods=("Trigonometric (orthogonal)", "RBFSampler")):
    """The best random-feature model, and the kernel errors of ``methods`` at ``width``.

    Returns
    -------
    best : pandas.Series
        The summary row of highest test ``R^2`` among the random-feature models.
    kernel_errors : dict of str to float
        Kernel error at ``width`` of each of ``methods`` present in the summary.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.report.compute import regression_highlights
    >>> summary = pd.DataFrame({"method": ["RBFSampler", "RBFSampler"],
    ...     "n_components": [8, 32], "test_r2": [0.3, 0.4], "kernel_error": [0.5, 0.2]})
    >>> best, errors = regression_highlights(summary, width=32)
    >>> int(best["n_components"]), errors
    (32, {'RBFSampler': 0.2})
    """
    best = summary.dropna(subset=["n_components"]).sort_values("test_r2").iloc[-1]
    at_width = summary[summary["n_components"] == width].set_index("method")["kernel_error"]
    return best, {method: float(at_width[method]) for method in methods if method in at_width}

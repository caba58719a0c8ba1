"""A self-contained HTML report of favorkern's three jobs (the engine of ``favorkern report``).

:func:`write_report` runs, on built-in defaults and through the library's public
functions,

1. the **variance study** (:func:`favorkern.diagnostics.variance_study`: closed-form
   against Monte-Carlo MSE of the positive, hyperbolic and trigonometric estimators,
   iid and orthogonal; and the Performer's Fig. 2 from
   :func:`favorkern.plotting.plot_trig_positive_ratio`),
2. **attention** accuracy and speed against exact softmax attention
   (:func:`favorkern.softmax_attention`, :class:`favorkern.FavorAttention`,
   :func:`favorkern.diagnostics.attention_error`),
3. **kernel regression** on the diabetes data that ships with scikit-learn
   (:func:`favorkern.regression.compare_regression`),

and writes ``index.html`` with every figure embedded as a base64 PNG, the tables as
HTML and a short explanation beside each figure, plus the raw tables as CSV files.
Each job is also a function returning a :class:`Section`, and :func:`render_html`
turns sections into the page.

pandas and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import platform
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

__all__ = [
    "PRESETS",
    "ReportConfig",
    "Section",
    "variance_section",
    "attention_section",
    "regression_section",
    "render_html",
    "write_report",
]


@dataclass(frozen=True)
class ReportConfig:
    """Sizes of the three jobs of :func:`write_report` (see :data:`PRESETS`).

    Parameters
    ----------
    variance_dims : int
        Dimension ``d`` of the default pairs of the variance study.
    variance_features : tuple of int
        Numbers ``m`` of random projections in the variance study.
    variance_trials : int
        Monte-Carlo trials per (projection, ``m``).
    variance_estimators : tuple of str
        Feature maps of the variance study.
    variance_projections : tuple of str
        Kinds of projection of the variance study.
    attention_lengths : tuple of int
        Sequence lengths ``L`` of the speed/accuracy table (``d = 64``).
    attention_dims : int
        Query/key/value dimension of the speed/accuracy table.
    attention_repeats : int
        Least number of timed runs per length (the fastest is reported).
    attention_error_length : int
        ``L`` of the error-against-``m`` study (``d = 16``, Performer Fig. 4 protocol).
    attention_error_features : tuple of int
        Numbers ``m`` of the error-against-``m`` study.
    attention_error_seeds : int
        Independent projections (and inputs) averaged per point of that study.
    regression_data : str
        Data set name for :func:`favorkern.regression.load_dataset`.
    regression_features : tuple of int
        Widths compared by :func:`favorkern.regression.compare_regression`.
    regression_cv_samples : int
        Rows used to choose ``gamma`` and ``alpha`` by cross-validation.
    regression_repeats : int
        Seeds per random-feature method and width.
    seed : int
        Seed of every draw.

    Examples
    --------
    >>> from dataclasses import replace
    >>> from favorkern.report import PRESETS
    >>> config = replace(PRESETS["quick"], seed=1, variance_trials=300)
    >>> config.seed, config.variance_trials, config.attention_lengths
    (1, 300, (256, 1024, 4096))
    """

    variance_dims: int = 16
    variance_features: tuple = (16, 32, 64, 128, 256)
    variance_trials: int = 2000
    variance_estimators: tuple = ("positive", "hyperbolic", "trigonometric")
    variance_projections: tuple = ("gaussian", "orthogonal")
    attention_lengths: tuple = (256, 1024, 4096, 8192)
    attention_dims: int = 64
    attention_repeats: int = 3
    attention_error_length: int = 1024
    attention_error_features: tuple = (16, 32, 64, 128, 256)
    attention_error_seeds: int = 3
    regression_data: str = "diabetes"
    regression_features: tuple = (16, 64, 256, 1024, 2048)
    regression_cv_samples: int = 1000
    regression_repeats: int = 3
    seed: int = 0


#: Built-in sizes: ``"full"`` (a few minutes), ``"quick"`` (well under two minutes on
#: two cores) and ``"tiny"`` (seconds; for tests).
PRESETS = {
    "full": ReportConfig(),
    "quick": ReportConfig(
        variance_features=(16, 32, 64, 128, 256),
        variance_trials=800,
        attention_lengths=(256, 1024, 4096),
        attention_error_features=(16, 32, 64, 128, 256),
        attention_error_seeds=2,
        regression_features=(16, 64, 256, 1024),
        regression_cv_samples=400,
        regression_repeats=1,
    ),
    "tiny": ReportConfig(
        variance_dims=8,
        variance_features=(4, 16),
        variance_trials=100,
        attention_lengths=(64, 256),
        attention_dims=16,
        attention_repeats=1,
        attention_error_length=128,
        attention_error_features=(8, 32),
        attention_error_seeds=1,
        regression_features=(16, 64),
        regression_cv_samples=100,
        regression_repeats=1,
    ),
}


@dataclass
class Section:
    """One job's part of the report.

    Attributes
    ----------
    key : str
        Short identifier (anchor of the section, prefix of its CSV files).
    title : str
    intro : str
        HTML paragraph(s) introducing the section.
    figures : list of (str, str)
        ``(png_data_uri, explanation_html)`` pairs; the explanation is shown beside
        the figure.
    tables : list of (str, pandas.DataFrame)
        ``(caption, table)`` pairs, rendered as HTML tables (cells already formatted).
    data : dict of str to pandas.DataFrame
        Raw results, written as ``<key>_<name>.csv`` next to ``index.html``.
    elapsed : float
        Seconds the job took.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.report import Section, render_html
    >>> table = pd.DataFrame({"m": ["16", "256"], "error": ["0.3", "0.08"]})
    >>> section = Section("demo", "A demo", "<p>Two rows.</p>", tables=[("Errors", table)])
    >>> "<caption>Errors</caption>" in render_html([section])
    True
    """

    key: str
    title: str
    intro: str
    figures: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    elapsed: float = 0.0


# -- helpers --------------------------------------------------------------------------


def _png_data_uri(fig, dpi=96):
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value):
    """A table cell: integers as such, floats to 3 significant digits, NaN as a dash."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–" if value is None or np.isnan(value) else str(value)
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    value = float(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.3g}"


def _formatted(frame):
    """A copy of ``frame`` with every cell formatted by :func:`_number`."""
    return frame.apply(lambda column: column.map(_number)).astype(str)


def _progress(progress, iterable, total, desc):
    return iterable if progress is None else progress(iterable, total=total, desc=desc)


def _best_time(fn, repeats, min_seconds=0.2, max_runs=50):
    """Fastest of at least ``repeats`` runs (more, up to ``max_runs``, for fast calls).

    The minimum, not the median: on a shared machine the other processes only ever
    add time, and multithreaded BLAS on small products can stall for tens of ms.
    """
    fn()  # warm-up: thread pool, numba cache load, first touch of buffers
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- the three jobs ---------------------------------------------------------------------


def variance_section(config=None, *, progress=None):
    """The variance study: closed-form against Monte-Carlo MSE, and Performer Fig. 2.

    Parameters
    ----------
    config : ReportConfig, default=None
        Sizes; ``PRESETS["quick"]`` if None.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the study's loop.

    Returns
    -------
    section : Section

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.report import PRESETS, variance_section
    >>> section = variance_section(PRESETS["tiny"])
    >>> len(section.figures), section.figures[0][0][:22]
    (3, 'data:image/png;base64,')
    """

    from .diagnostics import study_summary, variance_study
    from .plotting import plot_mse_vs_m, plot_trig_positive_ratio

    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    study = variance_study(
        n_dims=config.variance_dims,
        n_components=config.variance_features,
        n_trials=config.variance_trials,
        feature_maps=config.variance_estimators,
        projection=config.variance_projections,
        random_state=config.seed,
        progress=progress,
    )
    m_lo, m_hi = min(config.variance_features), max(config.variance_features)
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
    z = study["z"].replace([np.inf, -np.inf], np.nan).dropna()
    inside = int((z.abs() <= 4.5).sum())
    agreement = (
        f"{inside} of {len(z)} Monte-Carlo estimates lie within 4.5 standard errors of the "
        f"closed form (largest |z| = {z.abs().max():.2f})."
        if len(z)
        else "No finite Monte-Carlo z-scores."
    )

    pairs = list(dict.fromkeys(study["pair"]))
    halves = [pairs[: (len(pairs) + 1) // 2], pairs[(len(pairs) + 1) // 2 :]]
    at_max = study[study["n_components"] == m_hi]
    best = {}
    for pair, group in at_max.groupby("pair", sort=False):
        row = group.loc[group["theoretical_mse"].idxmin()]
        best[pair] = (
            f"{html.escape(str(pair))}: {row['feature_map']}, {row['projection']} "
            f"(MSE / SM² = {row['theoretical_mse'] / row['kernel'] ** 2:.2g})"
        )
    explanations = [
        "<p><b>MSE against the number of projections</b>, one panel per pair (norms "
        "and angle in the title). The MSE is divided by <code>SM(x, y)²</code>, so "
        "10⁻² means a 10% typical error. Lines are closed forms (solid: iid, dashed: "
        "orthogonal), points Monte Carlo with ±2 standard errors. Every estimator is "
        "unbiased, so every curve falls as 1/m: what differs is the constant. For "
        "nearby vectors (large <code>SM</code>) trigonometric features are the most "
        "accurate.</p>",
        "<p><b>The same for obtuse angles</b>, where <code>SM(x, y)</code> is small: "
        "the relative error of trigonometric features explodes while positive and "
        "hyperbolic ones stay accurate, the reason FAVOR+ uses positive features. "
        "Orthogonal projections never hurt positive features (Performer, Theorem 2).</p>",
    ]
    figures = []
    for half, explanation in zip(halves, explanations, strict=True):
        if not half:
            continue
        part = study[study["pair"].isin(half)]
        lowest = "; ".join(best[pair] for pair in half)
        figures.append(
            (
                _png_data_uri(plot_mse_vs_m(part)),
                explanation + f"<p>Most accurate at m = {m_hi}: {lowest}.</p>",
            )
        )
    figures.append(
        (
            _png_data_uri(plot_trig_positive_ratio()),
            "<p><b>Performer Fig. 2, from the closed forms.</b> "
            "<code>log10 MSE_trig / MSE_positive</code> for |x| = |y| = l at angle "
            "φ (same m for both, so m cancels). Red: positive features are better; "
            "blue: trigonometric ones are. The right panel is the slice l = 1: the "
            "ratio spans many orders of magnitude, tiny for nearby vectors and huge "
            "for opposite ones, so positive features are the safe choice for "
            "attention, where most query-key pairs have small softmax values.</p>",
        )
    )
    trials = config.variance_trials
    section = Section(
        key="variance",
        title="1. Variance of the random-feature estimators",
        intro=(
            "<p>Each estimator approximates the softmax kernel "
            "<code>SM(x, y) = exp(x·y)</code> by an average over <i>m</i> random "
            "projections. Its mean squared error has a closed form (Performer, Lemma 2, "
            "for iid projections, plus an exact correction for orthogonal blocks; see "
            "the Theory page of the documentation), which "
            "<code>favorkern.diagnostics.variance_study</code> puts next to a "
            f"Monte-Carlo estimate from {trials} independent draws of the library's own "
            f"feature maps, on four pairs in d = {config.variance_dims} dimensions. "
            f"{html.escape(agreement)}</p>"
        ),
        figures=figures,
        tables=[
            (
                f"Relative MSE (closed form, MSE / SM²) at the smallest and largest m, and "
                f"the largest |Monte Carlo − closed form| / se over m in "
                f"{list(config.variance_features)}.",
                _formatted(summary),
            )
        ],
        data={"study": study},
    )
    section.elapsed = time.perf_counter() - start
    return section


def _attention_inputs(rng, L, d, sigma, dtype):
    Q = (rng.standard_normal((L, d)) * sigma).astype(dtype)
    K = (rng.standard_normal((L, d)) * sigma).astype(dtype)
    V = rng.standard_normal((L, d)).astype(dtype)
    return Q, K, V


def attention_section(config=None, *, progress=None):
    """FAVOR+ attention against exact softmax attention: time, and error against ``m``.

    Parameters
    ----------
    config : ReportConfig, default=None
        Sizes; ``PRESETS["quick"]`` if None.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the loops.

    Returns
    -------
    section : Section

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.report import PRESETS, attention_section
    >>> section = attention_section(PRESETS["tiny"])
    >>> list(section.data["timing"]["L"])
    [64, 256]
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    from .attention import FavorAttention, softmax_attention
    from .diagnostics import attention_error
    from .plotting import feature_map_color

    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    d, m, sigma = config.attention_dims, 256, 0.5
    rng = np.random.default_rng(config.seed)
    layer = FavorAttention(n_components=m, random_state=config.seed)
    rows = []
    lengths = list(config.attention_lengths)
    for L in _progress(progress, lengths, len(lengths), "attention: speed"):
        Q, K, V = _attention_inputs(rng, L, d, sigma, np.float32)
        repeats = config.attention_repeats
        t_exact = _best_time(partial(softmax_attention, Q, K, V), repeats)
        t_bidir = _best_time(partial(layer, Q, K, V), repeats)
        t_causal = _best_time(partial(layer, Q, K, V, causal=True), repeats)
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
    timing = pd.DataFrame(rows)

    # Performer Fig. 4 protocol (THEORY.md 9.2): L tokens, d = 16, Q, K ~ N(0, sigma^2).
    sigmas = (0.5, 1.0)
    combos = [
        (s, kind, scheme)
        for s in sigmas
        for kind in ("positive", "trigonometric")
        for scheme in ("orthogonal", "gaussian")
    ]
    error_rows = []
    sizes = list(config.attention_error_features)
    for s, kind, scheme in _progress(progress, combos, len(combos), "attention: error"):
        for seed in range(config.attention_error_seeds):
            inputs = _attention_inputs(
                np.random.default_rng(1000 + seed), config.attention_error_length, 16, s, np.float64
            )
            for n_features in sizes:
                errors = attention_error(
                    *inputs,
                    n_components=n_features,
                    feature_map=kind,
                    projection=scheme,
                    random_state=seed,
                )
                error_rows.append(
                    {
                        "sigma": s,
                        "feature_map": kind,
                        "projection": scheme,
                        "n_components": n_features,
                        "seed": seed,
                        "median_row_error": float(np.median(errors)),
                    }
                )
    error_study = pd.DataFrame(error_rows)

    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    ax.loglog(timing["L"], timing["exact (ms)"], "o-", color="k", label="exact softmax")
    ax.loglog(timing["L"], timing["FAVOR+ (ms)"], "s-", label="FAVOR+ bidirectional")
    ax.loglog(timing["L"], timing["FAVOR+ causal (ms)"], "^-", label="FAVOR+ causal")
    ax.set(xlabel="sequence length L", ylabel="time (ms, best run)")
    ax.set_xticks(timing["L"], [str(L) for L in timing["L"]])
    ax.minorticks_off()
    ax.set_title(f"d = {d}, m = {m}, float32", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    speed_figure = _png_data_uri(fig)

    fig, axes = plt.subplots(
        1, len(sigmas), figsize=(5.0 * len(sigmas), 4.0), sharey=True, layout="constrained"
    )
    colors = {kind: feature_map_color(kind) for kind in ("positive", "trigonometric")}
    means = error_study.groupby(["sigma", "feature_map", "projection", "n_components"]).agg(
        error=("median_row_error", "mean")
    )
    for ax, s in zip(np.atleast_1d(axes), sigmas, strict=True):
        for kind in ("positive", "trigonometric"):
            for scheme, style in (("orthogonal", "--s"), ("gaussian", "-o")):
                curve = means.loc[(s, kind, scheme)]["error"]
                curve = curve[np.isfinite(curve) & (curve > 0)]
                ax.loglog(
                    curve.index,
                    curve.to_numpy(),
                    style,
                    color=colors[kind],
                    markersize=4,
                    label=f"{kind}, {scheme}",
                )
        ax.set_title(
            f"Q, K entries ~ N(0, {s:g}²), L = {config.attention_error_length}", fontsize=10
        )
        ax.set_xlabel("random projections m")
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("median relative row error")
    np.atleast_1d(axes)[0].legend(fontsize="small")
    error_figure = _png_data_uri(fig)

    widest = timing.iloc[-1]
    section = Section(
        key="attention",
        title="2. Attention: FAVOR+ against exact softmax attention",
        intro=(
            "<p><code>favorkern.favor_attention</code> replaces "
            "<code>softmax(QKᵀ/√d) V</code>, whose cost grows as L², by "
            "<code>D⁻¹ φ(Q) (φ(K)ᵀ V)</code> with positive random features φ "
            "(Performer, eq. 4), linear in L. Both are run on the same random "
            f"queries, keys and values (entries N(0, {sigma:g}²), float32); the error of a "
            "row is <code>|approx − exact| / |exact|</code> "
            "(<code>favorkern.diagnostics.attention_error</code>). "
            f"At L = {int(widest['L'])}, FAVOR+ took {widest['FAVOR+ (ms)']:.3g} ms "
            f"against {widest['exact (ms)']:.3g} ms for exact attention "
            f"({widest['speed-up']:.3g}× faster).</p>"
        ),
        figures=[
            (
                speed_figure,
                "<p><b>Time against sequence length.</b> Fastest of at least "
                f"{config.attention_repeats} runs after a warm-up, on this machine "
                "(see the footer). Exact attention grows quadratically, FAVOR+ "
                "linearly; the crossing point depends on d, m and the machine. "
                "Causal FAVOR+ uses prefix sums of the key state (Performer, eq. 11) "
                "and costs a constant factor more than the bidirectional one.</p>",
            ),
            (
                error_figure,
                "<p><b>Error against the number of projections</b> (the protocol of "
                "Performer Fig. 4, d = 16; mean over "
                f"{config.attention_error_seeds} seed(s) of the median row error). "
                "With small query/key norms (left) every estimator converges like "
                "1/√m and trigonometric features can even win; with larger norms "
                "(right) the trigonometric normalizer <code>D</code> can vanish or turn "
                "negative and its error stays large, while the error of positive "
                "features stays bounded. Larger norms need many more features for the "
                "same accuracy: the relative variance of each kernel estimate grows "
                "like <code>exp(|q + k|²/√d)</code>.</p>",
            ),
        ],
        tables=[
            (
                f"Exact attention against FAVOR+ (positive, orthogonal, m = {m}, d = {d}): "
                "best times and per-row relative errors (bidirectional unless stated).",
                _formatted(timing),
            )
        ],
        data={"timing": timing, "error_vs_m": error_study},
    )
    section.elapsed = time.perf_counter() - start
    return section


def regression_section(config=None, *, progress=None):
    """Random-feature ridge regression against RBFSampler, Nystroem and exact KernelRidge.

    Parameters
    ----------
    config : ReportConfig, default=None
        Sizes; ``PRESETS["quick"]`` if None.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` wrapping the fits.

    Returns
    -------
    section : Section

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.report import PRESETS, regression_section
    >>> section = regression_section(PRESETS["tiny"])
    >>> section.key, len(section.figures)
    ('regression', 1)
    """
    from .regression import (
        compare_regression,
        load_dataset,
        plot_regression,
        summarize_regression,
    )

    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    X, y, name = load_dataset(config.regression_data, random_state=config.seed)
    results = compare_regression(
        X,
        y,
        n_features=config.regression_features,
        cv_samples=config.regression_cv_samples,
        n_repeats=config.regression_repeats,
        random_state=config.seed,
        progress=progress,
    )
    summary = summarize_regression(results)
    attrs = results.attrs
    figure = _png_data_uri(plot_regression(results, title=name))
    table = summary.drop(columns="n_repeats").rename(
        columns={
            "n_features": "width",
            "fit_time": "fit (s)",
            "predict_time": "predict (s)",
            "test_r2": "test R²",
            "kernel_error": "kernel error",
        }
    )
    best = summary.dropna(subset=["n_features"]).sort_values("test_r2").iloc[-1]
    widest = summary[summary["n_features"] == max(config.regression_features)]
    errors = widest.set_index("method")["kernel_error"]
    trig, sampler = "Trigonometric (orthogonal)", "RBFSampler"
    if trig in errors and sampler in errors:
        orthogonal_gain = (
            f"at width {max(config.regression_features)} their kernel error is "
            f"{errors[trig]:.3g} against {errors[sampler]:.3g}."
        )
    else:
        orthogonal_gain = ""
    section = Section(
        key="regression",
        title="3. Kernel ridge regression with random features",
        intro=(
            f"<p>Data: {html.escape(name)}, ships with scikit-learn; "
            f"{attrs['n_train']} training and {attrs['n_test']} test rows, "
            f"d = {attrs['n_dims']}. Every model is "
            "<code>StandardScaler → features → Ridge</code>, which is kernel ridge "
            "regression with the approximate kernel φ(x)·φ(y); "
            "<code>Trigonometric (streaming)</code> is the same features in "
            "<code>RandomFeatureRidge</code>, which accumulates the width × width "
            "statistics over row blocks instead of holding the n × width features "
            "(same predictions; its memory does not grow with n). The Gaussian kernel "
            f"scale γ = {attrs['gamma']:.3g} and the penalty α = {attrs['alpha']:.3g} "
            "were chosen once by cross-validating exact kernel ridge regression and are "
            "shared by all methods, so the differences come from the kernel "
            "approximation alone. Best random-feature model: "
            f"{html.escape(str(best['method']))} at width {int(best['n_features'])}, "
            f"test R² = {best['test_r2']:.3f}.</p>"
        ),
        figures=[
            (
                figure,
                "<p><b>Left:</b> relative Frobenius error of the approximate kernel "
                "matrix on held-out rows against the output width; it falls like "
                "1/√width for the Monte-Carlo methods. <b>Right:</b> test R² against "
                "width; the dashed line is exact <code>KernelRidge</code>, which the "
                "random-feature models approach as the width grows. "
                "<code>TrigonometricRandomFeatures</code> are scikit-learn's "
                "<code>RBFSampler</code> (random Fourier features) with orthogonal "
                f"instead of iid projections: {html.escape(orthogonal_gain)} On a data "
                "set this small the exact model is cheap; random features pay off from "
                "tens of thousands of rows "
                "(<code>favorkern regress --data friedman1</code>).</p>",
            )
        ],
        tables=[
            (
                "Mean over "
                f"{config.regression_repeats} seed(s) per method and width; times in "
                "seconds on this machine.",
                _formatted(table),
            )
        ],
        data={"results": results},
    )
    section.elapsed = time.perf_counter() - start
    return section


# -- the page -------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0 auto; max-width: 1400px; padding: 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; font-size: 0.9em; }
nav a { margin-right: 1.2em; }
.figure { display: grid; grid-template-columns: minmax(0, 3fr) minmax(15em, 1fr);
          gap: 1.5em; align-items: start; margin: 1.2em 0; }
.figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.figure .explain { font-size: 0.95em; }
@media (max-width: 800px) { .figure { grid-template-columns: 1fr; } }
table { border-collapse: collapse; margin: 0.6em 0 1.2em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; padding-bottom: 0.3em; color: #444; }
.table-wrap { overflow-x: auto; }
code { background: #f5f5f5; padding: 0 0.2em; border-radius: 3px; }
footer { margin-top: 3em; color: #666; font-size: 0.85em; border-top: 1px solid #ddd; }
"""


def _machine():
    """Versions and hardware, for the footer (timings mean nothing without them)."""
    import numba
    import scipy
    import sklearn

    from . import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"favorkern {__version__}, Python {platform.python_version()}, numpy "
        f"{np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
        f"numba {numba.__version__}; {platform.system()} {platform.machine()}, {cpu}, "
        f"{usable} usable CPU core(s)"
    )


def _table_html(caption, frame):
    return (
        '<div class="table-wrap">'
        + frame.to_html(index=False, border=0, escape=True)
        .replace('<table class="dataframe">', "<table>", 1)
        .replace("<table>", f"<table><caption>{html.escape(caption)}</caption>", 1)
        + "</div>"
    )


def render_html(sections, *, title="favorkern report", subtitle="", footer=""):
    """The report page: a header, one ``<section>`` per :class:`Section`, a footer.

    Parameters
    ----------
    sections : sequence of Section
    title : str, default="favorkern report"
    subtitle : str, default=""
        Plain text under the title.
    footer : str, default=""
        Plain text at the bottom (the machine, for instance).

    Returns
    -------
    page : str
        A complete HTML document with no external resources.

    Examples
    --------
    >>> from favorkern.report import Section, render_html
    >>> page = render_html([Section("demo", "Demo", "<p>Hello.</p>")], title="A & B")
    >>> page.startswith("<!DOCTYPE html>"), "<title>A &amp; B</title>" in page
    (True, True)
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: without it a browser asks for favicon.ico next to the file.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')
    if len(sections) > 1:
        links = " ".join(
            f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections
        )
        parts.append(f"<nav>{links}</nav>")
    for section in sections:
        parts.append(f'<section id="{html.escape(section.key)}">')
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.append(section.intro)
        for number, (uri, explanation) in enumerate(section.figures, start=1):
            alt = f"{section.title}, figure {number}"
            parts.append(
                f'<div class="figure"><img src="{uri}" alt="{html.escape(alt)}">'
                f'<div class="explain">{explanation}</div></div>'
            )
        for caption, frame in section.tables:
            parts.append(_table_html(caption, frame))
        if section.elapsed:
            parts.append(f'<p class="meta">This section took {section.elapsed:.1f} s.</p>')
        parts.append("</section>")
    if footer:
        parts.append(f"<footer><p>{html.escape(footer)}</p></footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


_JOBS = {
    "variance": variance_section,
    "attention": attention_section,
    "regression": regression_section,
}


def write_report(
    out_dir="report", *, preset="quick", config=None, jobs=tuple(_JOBS), progress=None
):
    """Run the jobs and write ``out_dir/index.html`` (plus one CSV per raw table).

    Parameters
    ----------
    out_dir : str or path-like, default="report"
        Created if missing; ``index.html`` in it is overwritten.
    preset : {"full", "quick", "tiny"}, default="quick"
        Sizes from :data:`PRESETS`; when ``config`` is given, only the label shown
        in the report.
    config : ReportConfig, default=None
        Explicit sizes; ``dataclasses.replace(PRESETS["quick"], seed=1)`` changes one.
    jobs : sequence of {"variance", "attention", "regression"}, default=all three
        Which sections to run, in this order.
    progress : callable, default=None
        ``progress(iterable, total=..., desc=...)`` (e.g. ``tqdm``) wrapping the
        loop over jobs and each job's inner loop.

    Returns
    -------
    path : str
        The path of ``index.html``.

    Examples
    --------
    >>> import os, tempfile
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.report import write_report
    >>> out = tempfile.mkdtemp()
    >>> path = write_report(out, preset="tiny", jobs=["variance"])
    >>> sorted(os.listdir(out))
    ['index.html', 'variance_study.csv']
    """
    if config is None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        config = PRESETS[preset]
    elif not isinstance(config, ReportConfig):
        raise TypeError(f"config must be a ReportConfig, got {type(config).__name__}")
    jobs = list(jobs)
    for job in jobs:
        if job not in _JOBS:
            raise ValueError(f"jobs must be among {list(_JOBS)}, got {job!r}")
    if not jobs:
        raise ValueError("jobs must name at least one job")

    start = time.perf_counter()
    sections = []
    for job in _progress(progress, jobs, len(jobs), "report"):
        sections.append(_JOBS[job](config, progress=progress))
    elapsed = time.perf_counter() - start

    os.makedirs(out_dir, exist_ok=True)
    for section in sections:
        for name, frame in section.data.items():
            frame.to_csv(os.path.join(out_dir, f"{section.key}_{name}.csv"), index=False)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render_html(
        sections,
        subtitle=(
            f"Generated {stamp} by `favorkern report` (preset: {preset}) in "
            f"{elapsed:.0f} s. Every figure and table below was computed on this machine."
        ),
        footer=f"Machine: {_machine()}. Seed {config.seed}.",
    )
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path

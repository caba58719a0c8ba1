"""The report's three sections: each runs its job (:mod:`favorkern.report.compute`),
draws its figures (:mod:`favorkern.plotting`) and puts them next to the prose that
explains them in a :class:`~favorkern.report.Section`."""

from __future__ import annotations

import html
import time

from . import compute
from .config import PRESETS, Section
from .render import figure_data_uri, format_table

__all__ = ["variance_section", "attention_section", "regression_section"]


# -- variance -----------------------------------------------------------------------

_VARIANCE_EXPLANATIONS = (
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
)

_FIG2_EXPLANATION = (
    "<p><b>Performer Fig. 2, from the closed forms.</b> "
    "<code>log10 MSE_trig / MSE_positive</code> for |x| = |y| = l at angle "
    "φ (same m for both, so m cancels). Red: positive features are better; "
    "blue: trigonometric ones are. The right panel is the slice l = 1: the "
    "ratio spans many orders of magnitude, tiny for nearby vectors and huge "
    "for opposite ones, so positive features are the safe choice for "
    "attention, where most query-key pairs have small softmax values.</p>"
)


def _variance_figures(study, m_hi):
    """Two panels of MSE against width (the study's pairs in two halves), then Fig. 2."""
    from ..plotting import plot_mse_vs_width, plot_trig_positive_ratio

    best = {
        row.pair: (
            f"{html.escape(str(row.pair))}: {row.feature_map}, {row.projection} "
            f"(MSE / SM² = {row.relative_mse:.2g})"
        )
        for row in compute.most_accurate(study, m_hi).itertuples(index=False)
    }
    pairs = list(dict.fromkeys(study["pair"]))
    middle = (len(pairs) + 1) // 2
    figures = []
    for half, explanation in zip(
        (pairs[:middle], pairs[middle:]), _VARIANCE_EXPLANATIONS, strict=True
    ):
        if not half:
            continue
        lowest = "; ".join(best[pair] for pair in half)
        figure = plot_mse_vs_width(study[study["pair"].isin(half)])
        figures.append(
            (
                figure_data_uri(figure),
                explanation + f"<p>Most accurate at width {m_hi}: {lowest}.</p>",
            )
        )
    figures.append((figure_data_uri(plot_trig_positive_ratio()), _FIG2_EXPLANATION))
    return figures


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
    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    study, summary = compute.variance_tables(config, progress=progress)
    inside, total, largest = compute.z_agreement(study)
    agreement = (
        f"{inside} of {total} Monte-Carlo estimates lie within {compute.Z_LIMIT:g} "
        f"standard errors of the closed form (largest |z| = {largest:.2f})."
        if total
        else "No finite Monte-Carlo z-scores."
    )
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
            f"Monte-Carlo estimate from {config.variance_trials} independent draws of the "
            "library's own feature maps, on four pairs in d = "
            f"{config.variance_dims} dimensions. {html.escape(agreement)}</p>"
        ),
        figures=_variance_figures(study, max(config.variance_n_components)),
        tables=[
            (
                f"Relative MSE (closed form, MSE / SM²) at the smallest and largest m, and "
                f"the largest |Monte Carlo − closed form| / se over the widths "
                f"{list(config.variance_n_components)}.",
                format_table(summary),
            )
        ],
        data={"study": study},
    )
    section.elapsed = time.perf_counter() - start
    return section


# -- attention ----------------------------------------------------------------------


def _attention_intro(timing):
    widest = timing.iloc[-1]
    return (
        "<p><code>favorkern.favor_attention</code> replaces "
        "<code>softmax(QKᵀ/√d) V</code>, whose cost grows as L², by "
        "<code>D⁻¹ φ(Q) (φ(K)ᵀ V)</code> with positive random features φ "
        "(Performer, eq. 4), linear in L. Both are run on the same random "
        f"queries, keys and values (entries N(0, {compute.ATTENTION_SIGMA:g}²), float32); "
        "the error of a row is <code>|approx − exact| / |exact|</code> "
        "(<code>favorkern.diagnostics.attention_error</code>). "
        f"At L = {int(widest['L'])}, FAVOR+ took {widest['FAVOR+ (ms)']:.3g} ms "
        f"against {widest['exact (ms)']:.3g} ms for exact attention "
        f"({widest['speed-up']:.3g}× faster).</p>"
    )


def _attention_figures(config, timing, errors):
    """The speed figure and the error figure, each with its explanation."""
    from ..plotting import plot_attention_error, plot_attention_speed

    title = f"d = {config.attention_dims}, n_components = {compute.ATTENTION_N_COMPONENTS}, float32"
    speed = figure_data_uri(plot_attention_speed(timing, title=title))
    error = figure_data_uri(plot_attention_error(errors, length=config.attention_error_length))
    return [
        (
            speed,
            "<p><b>Time against sequence length.</b> Fastest of at least "
            f"{config.attention_repeats} runs after a warm-up, on this machine "
            "(see the footer). Exact attention grows quadratically, FAVOR+ "
            "linearly; the crossing point depends on d, m and the machine. "
            "Causal FAVOR+ uses prefix sums of the key state (Performer, eq. 11) "
            "and costs a constant factor more than the bidirectional one.</p>",
        ),
        (
            error,
            "<p><b>Error against the number of projections</b> (the protocol of "
            f"Performer Fig. 4, d = {compute.ERROR_DIMS}; mean over "
            f"{config.attention_error_seeds} seed(s) of the median row error). "
            "With small query/key norms (left) every estimator converges like "
            "1/√m and trigonometric features can even win; with larger norms "
            "(right) the trigonometric normalizer <code>D</code> can vanish or turn "
            "negative and its error stays large, while the error of positive "
            "features stays bounded. Larger norms need many more features for the "
            "same accuracy: the relative variance of each kernel estimate grows "
            "like <code>exp(|q + k|²/√d)</code>.</p>",
        ),
    ]


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
    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    timing = compute.attention_timing(config, progress=progress)
    errors = compute.attention_error_study(config, progress=progress)
    section = Section(
        key="attention",
        title="2. Attention: FAVOR+ against exact softmax attention",
        intro=_attention_intro(timing),
        figures=_attention_figures(config, timing, errors),
        tables=[
            (
                "Exact attention against FAVOR+ (positive, orthogonal, "
                f"m = {compute.ATTENTION_N_COMPONENTS}, d = {config.attention_dims}): "
                "best times and per-row relative errors (bidirectional unless stated).",
                format_table(timing),
            )
        ],
        data={"timing": timing, "error_vs_m": errors},
    )
    section.elapsed = time.perf_counter() - start
    return section


# -- regression ---------------------------------------------------------------------

# The summary's columns as the report's table shows them.
_REGRESSION_COLUMNS = {
    "n_components": "width",
    "fit_time": "fit (s)",
    "predict_time": "predict (s)",
    "test_r2": "test R²",
    "kernel_error": "kernel error",
}
_TRIG, _SAMPLER = "Trigonometric (orthogonal)", "RBFSampler"


def _regression_intro(attrs, name, best):
    return (
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
        f"{html.escape(str(best['method']))} at width {int(best['n_components'])}, "
        f"test R² = {best['test_r2']:.3f}.</p>"
    )


def _regression_explanation(width, kernel_errors):
    if _TRIG in kernel_errors and _SAMPLER in kernel_errors:
        orthogonal_gain = (
            f"at width {width} their kernel error is "
            f"{kernel_errors[_TRIG]:.3g} against {kernel_errors[_SAMPLER]:.3g}."
        )
    else:
        orthogonal_gain = ""
    return (
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
        "(<code>favorkern regress --data friedman1</code>).</p>"
    )


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
    from ..plotting import plot_regression

    config = PRESETS["quick"] if config is None else config
    start = time.perf_counter()
    results, summary, name = compute.regression_tables(config, progress=progress)
    width = max(config.regression_n_components)
    best, kernel_errors = compute.regression_highlights(
        summary, width=width, methods=(_TRIG, _SAMPLER)
    )
    table = summary.drop(columns="n_repeats").rename(columns=_REGRESSION_COLUMNS)
    section = Section(
        key="regression",
        title="3. Kernel ridge regression with random features",
        intro=_regression_intro(results.attrs, name, best),
        figures=[
            (
                figure_data_uri(plot_regression(results, title=name)),
                _regression_explanation(width, kernel_errors),
            )
        ],
        tables=[
            (
                "Mean over "
                f"{config.regression_repeats} seed(s) per method and width; times in "
                "seconds on this machine.",
                format_table(table),
            )
        ],
        data={"results": results},
    )
    section.elapsed = time.perf_counter() - start
    return section

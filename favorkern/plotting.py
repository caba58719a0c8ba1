"""Every figure of favorkern (matplotlib is imported inside the functions).

Variance diagnostics:

* :func:`plot_mse_vs_width`: closed-form MSE as lines, Monte-Carlo MSE as points with
  error bars, against the number of projections, on log-log axes.
* :func:`plot_trig_positive_ratio`: the Performer paper's Fig. 2, the heat map of
  ``MSE_trig / MSE_positive`` over angle and norm, with the ``l = 1`` slice
  (:ref:`theory-fig2`).

Attention and regression:

* :func:`plot_attention_speed`: time of exact and FAVOR+ attention against the
  sequence length.
* :func:`plot_attention_error`: median row error of FAVOR+ attention against the
  number of projections (the protocol of the Performer's Fig. 4).
* :func:`plot_regression`: kernel-approximation error and test ``R^2`` against the
  output width, one line per method of :func:`favorkern.regression.compare_regression`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "plot_mse_vs_width",
    "plot_trig_positive_ratio",
    "trig_positive_ratio",
    "feature_map_color",
    "plot_attention_speed",
    "plot_attention_error",
    "plot_regression",
]

# One color per registered feature map, in registration order (user maps included).
_PALETTE = ("tab:blue", "tab:green", "tab:red", "tab:olive", "tab:purple", "tab:brown",
            "tab:pink", "tab:cyan", "tab:orange", "tab:gray")  # fmt: skip


def feature_map_color(name) -> str:
    """The plot color of a registered feature map (black for an unknown name).

    Examples
    --------
    >>> from favorkern.plotting import feature_map_color
    >>> feature_map_color("positive"), feature_map_color("unknown")
    ('tab:blue', 'k')
    """
    from .feature_maps import feature_map_names

    names = feature_map_names()
    if name not in names:
        return "k"
    return _PALETTE[names.index(name) % len(_PALETTE)]


_LINESTYLES = {"gaussian": "-", "orthogonal": "--", "simplex": ":", "structured": "-."}
_MARKERS = {"gaussian": "o", "orthogonal": "s"}


def _figure(n_panels, fig, panel_size=(4.2, 3.4), max_columns=4):
    import matplotlib.pyplot as plt

    columns = min(n_panels, max_columns)
    rows = -(-n_panels // columns)
    if fig is None:
        fig = plt.figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(n_panels)]
    return fig, axes


def plot_mse_vs_width(study, *, relative=True, n_se=2.0, fig=None):
    """MSE against the number of projections, one panel per pair.

    Parameters
    ----------
    study : pandas.DataFrame
        The output of :func:`favorkern.diagnostics.variance_study`.
    relative : bool, default=True
        Plot ``MSE / k(x, y)^2`` (relative MSE), which makes pairs comparable.
    n_se : float, default=2.0
        Half-width of the error bars in standard errors.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (default a new one).

    Returns
    -------
    fig : matplotlib.figure.Figure

    Notes
    -----
    Lines: closed forms (solid iid, dashed orthogonal, dotted simplex) through the study's ``m``
    values; points: Monte Carlo with ``+- n_se`` standard errors.  Zero values
    (e.g. trigonometric features at ``x = y``) cannot be drawn on log axes and are
    left out.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.diagnostics import variance_study
    >>> from favorkern.plotting import plot_mse_vs_width
    >>> study = variance_study(n_components=[4, 8], n_trials=100)
    >>> fig = plot_mse_vs_width(study)
    >>> len(fig.axes)
    4
    """
    pairs = list(dict.fromkeys(study["pair"]))
    fig, axes = _figure(len(pairs), fig)
    for ax, pair in zip(axes, pairs, strict=True):
        part = study[study["pair"] == pair]
        scale = part["kernel"].iloc[0] ** 2 if relative else 1.0
        for (kind, scheme), group in part.groupby(["feature_map", "projection"], sort=False):
            group = group.sort_values("n_components")
            m = group["n_components"].to_numpy(dtype=float)
            theory = group["theoretical_mse"].to_numpy() / scale
            empirical = group["empirical_mse"].to_numpy() / scale
            err = n_se * group["se"].to_numpy() / scale
            color = feature_map_color(kind)
            shown = theory > 0
            ax.plot(
                m[shown],
                theory[shown],
                linestyle=_LINESTYLES.get(scheme, "-"),
                color=color,
                label=f"{kind}, {scheme}",
            )
            shown = empirical > 0
            lower = np.minimum(err, empirical * 0.999)  # keep bars positive on log axes
            ax.errorbar(
                m[shown],
                empirical[shown],
                yerr=[lower[shown], err[shown]],
                fmt=_MARKERS.get(scheme, "o"),
                color=color,
                markersize=3.5,
                markerfacecolor="none" if scheme == "orthogonal" else color,
                linestyle="none",
                capsize=2,
            )
        first = part.iloc[0]
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(
            f"{pair}: |x|={first['norm_x']:.2g}, |y|={first['norm_y']:.2g}, "
            f"angle={np.degrees(first['angle']):.0f}°",
            fontsize=9,
        )
        ax.set_xlabel("output width n_components")
        ax.set_ylabel("MSE / k(x,y)²" if relative else "MSE")
        ax.grid(True, which="both", alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Closed form (lines) and Monte Carlo (points, ±{n_se:g} se)", fontsize=10)
    fig.tight_layout()
    return fig


def trig_positive_ratio(angle, norm):
    """``r = MSE_trig / MSE_positive`` for ``|x| = |y| = norm`` at ``angle`` (iid, any m).

    ``r = (1 - e^{-|delta|^2})^2 / (2 SM^4 (1 - e^{-|z|^2}))`` (:ref:`theory-trig-positive-ratio`),
    computed as a difference of :func:`favorkern.diagnostics.theoretical_mse` logs;
    ``nan`` where both are zero (``norm = 0``), ``0`` at angle 0, ``inf`` at ``pi``.

    Examples
    --------
    >>> from favorkern.plotting import trig_positive_ratio
    >>> round(float(trig_positive_ratio(3.0, 1.0)), -1)
    1270.0
    """
    from .diagnostics import theoretical_mse

    angle, norm = np.broadcast_arrays(np.asarray(angle, float), np.asarray(norm, float))
    length = np.abs(norm).ravel()
    x = np.stack([length, np.zeros_like(length)], axis=1)
    y = np.stack([length * np.cos(angle.ravel()), length * np.sin(angle.ravel())], axis=1)
    log_trig = theoretical_mse(x, y, feature_map="trigonometric", n_components=2, log=True)
    log_pos = theoretical_mse(x, y, feature_map="positive", n_components=1, log=True)
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.exp(log_trig - log_pos)
    return ratio.reshape(angle.shape)


def plot_trig_positive_ratio(*, max_norm=2.0, n_angles=241, n_norms=161, slice_norm=1.0, fig=None):
    """The Performer's Fig. 2: ``MSE_trig / MSE_positive`` over angle and norm.

    Parameters
    ----------
    max_norm : float, default=2.0
        Norm axis ``l`` in ``[-max_norm, max_norm]`` (symmetrized around the
        origin as in the paper; the ratio depends on ``|l|`` only).
    n_angles, n_norms : int
        Grid resolution over ``[-pi, pi] x [-max_norm, max_norm]``.
    slice_norm : float, default=1.0
        Norm of the slice drawn in the second panel.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
        Left: ``log10 r`` heat map; right: ``r`` at ``l = slice_norm`` on a log axis
        (``r < 1``: trigonometric features are better).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from favorkern.plotting import plot_trig_positive_ratio
    >>> fig = plot_trig_positive_ratio(n_angles=31, n_norms=21)
    >>> len(fig.axes)   # heat map, color bar, slice
    3
    """
    import matplotlib.pyplot as plt

    # Cell centres: at exactly +-pi the positive MSE is 0 and the ratio infinite.
    edges = np.linspace(-np.pi, np.pi, n_angles + 1)
    angles = 0.5 * (edges[1:] + edges[:-1])
    norms = np.linspace(-max_norm, max_norm, n_norms)
    grid_angle, grid_norm = np.meshgrid(angles, norms)
    with np.errstate(divide="ignore"):
        log_ratio = np.log10(trig_positive_ratio(grid_angle, grid_norm))
    log_ratio = np.ma.masked_invalid(log_ratio)
    if fig is None:
        fig = plt.figure(figsize=(10, 3.8))
    ax_map = fig.add_subplot(1, 2, 1)
    values = np.abs(log_ratio.compressed())
    limit = float(np.percentile(values, 99)) if values.size else 1.0
    mesh = ax_map.pcolormesh(
        angles, norms, log_ratio, cmap="RdBu_r", vmin=-limit, vmax=limit, shading="auto"
    )
    fig.colorbar(mesh, ax=ax_map, label="log10 MSE_trig / MSE_positive")
    ax_map.axhline(slice_norm, color="k", linewidth=0.8, linestyle=":")
    ax_map.set_xlabel("angle φ (radians)")
    ax_map.set_ylabel("norm l = |x| = |y|")
    ax_map.set_title("Performer Fig. 2 (closed form)", fontsize=10)

    ax_slice = fig.add_subplot(1, 2, 2)
    ratio = trig_positive_ratio(angles, slice_norm)
    shown = np.isfinite(ratio) & (ratio > 0)
    ax_slice.plot(angles[shown], ratio[shown], color="k")
    ax_slice.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax_slice.set_yscale("log")
    ax_slice.set_xlabel("angle φ (radians)")
    ax_slice.set_ylabel("MSE_trig / MSE_positive")
    ax_slice.set_title(f"slice l = {slice_norm:g}", fontsize=10)
    ax_slice.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _log_axis_ticks(ax, values):
    """Ticks at exactly ``values`` on a log x axis, labelled as integers."""
    ax.set_xticks(values, [str(value) for value in values])
    ax.minorticks_off()


def plot_attention_speed(timing, *, title=None, fig=None):
    """Time of exact and FAVOR+ attention against the sequence length, on log-log axes.

    Parameters
    ----------
    timing : pandas.DataFrame
        One row per length: columns ``"L"``, ``"exact (ms)"``, ``"FAVOR+ (ms)"`` and
        ``"FAVOR+ causal (ms)"`` (the table of
        :func:`favorkern.report.compute.attention_timing`).
    title : str, default=None
        Axes title (the sizes, for instance).
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (default a new one).

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> from favorkern.plotting import plot_attention_speed
    >>> timing = pd.DataFrame({"L": [256, 1024], "exact (ms)": [1.0, 16.0],
    ...     "FAVOR+ (ms)": [0.5, 2.0], "FAVOR+ causal (ms)": [1.0, 4.0]})
    >>> fig = plot_attention_speed(timing, title="d = 64")
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['exact softmax', 'FAVOR+ bidirectional', 'FAVOR+ causal']
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    lengths = timing["L"]
    ax.loglog(lengths, timing["exact (ms)"], "o-", color="k", label="exact softmax")
    ax.loglog(lengths, timing["FAVOR+ (ms)"], "s-", label="FAVOR+ bidirectional")
    ax.loglog(lengths, timing["FAVOR+ causal (ms)"], "^-", label="FAVOR+ causal")
    ax.set(xlabel="sequence length L", ylabel="time (ms, best run)")
    _log_axis_ticks(ax, list(lengths))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_attention_error(errors, *, length=None, fig=None):
    """Median row error of FAVOR+ attention against ``m``, one panel per input scale.

    Parameters
    ----------
    errors : pandas.DataFrame
        One row per run: columns ``sigma`` (standard deviation of the query and key
        entries), ``feature_map``, ``projection``, ``n_components`` and
        ``median_row_error`` (the table of
        :func:`favorkern.report.compute.attention_error_study`).  Rows with the
        same ``sigma``, map, projection and ``n_components`` (other seeds) are
        averaged.
    length : int, default=None
        Sequence length, shown in the panel titles.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (default a new one).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Lines per feature map (its color, :func:`feature_map_color`) and projection
        (solid iid, dashed orthogonal); non-positive or non-finite means are left out.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> from favorkern.plotting import plot_attention_error
    >>> errors = pd.DataFrame({"sigma": [0.5] * 4 + [1.0] * 4,
    ...     "feature_map": ["positive"] * 8, "projection": ["gaussian", "orthogonal"] * 4,
    ...     "n_components": [16, 16, 64, 64] * 2,
    ...     "median_row_error": [0.2, 0.15, 0.1, 0.07, 0.4, 0.3, 0.2, 0.15]})
    >>> fig = plot_attention_error(errors, length=1024)
    >>> len(fig.axes), fig.axes[0].get_title()
    (2, 'Q, K entries ~ N(0, 0.5²), L = 1024')
    """
    import matplotlib.pyplot as plt

    sigmas = list(dict.fromkeys(errors["sigma"]))
    sizes = sorted(set(errors["n_components"]))
    if fig is None:
        fig = plt.figure(figsize=(5.0 * len(sigmas), 4.0), layout="constrained")
    axes = fig.subplots(1, len(sigmas), sharey=True, squeeze=False)[0]
    keys = ["sigma", "feature_map", "projection"]
    means = errors.groupby([*keys, "n_components"], sort=False)["median_row_error"].mean()
    for ax, sigma in zip(axes, sigmas, strict=True):
        for (_, kind, scheme), curve in means[means.index.get_level_values(0) == sigma].groupby(
            level=keys, sort=False
        ):
            curve = curve.droplevel(keys).sort_index()
            curve = curve[np.isfinite(curve) & (curve > 0)]
            ax.loglog(
                curve.index,
                curve.to_numpy(),
                _LINESTYLES.get(scheme, "-") + _MARKERS.get(scheme, "o"),
                color=feature_map_color(kind),
                markersize=4,
                label=f"{kind}, {scheme}",
            )
        where = f", L = {length}" if length is not None else ""
        ax.set_title(f"Q, K entries ~ N(0, {sigma:g}²){where}", fontsize=10)
        ax.set_xlabel("output width n_components")
        _log_axis_ticks(ax, sizes)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median relative row error")
    axes[0].legend(fontsize="small")
    return fig


def plot_regression(results, *, title=None, fig=None):
    """Kernel-approximation error and test ``R^2`` against width, one line per method.

    Parameters
    ----------
    results : pandas.DataFrame
        The output of :func:`favorkern.regression.compare_regression` (or of
        :func:`favorkern.regression.summarize_regression`).
    title : str, default=None
        Figure title.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (default a new one).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Two panels; exact kernel ridge regression is a dashed horizontal line in the
        ``R^2`` panel.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_diabetes
    >>> from favorkern.plotting import plot_regression
    >>> from favorkern.regression import compare_regression
    >>> X, y = load_diabetes(return_X_y=True)
    >>> results = compare_regression(
    ...     X, y, n_components=[8, 32], methods=["RBFSampler"], gamma=0.025, alpha=1.0
    ... )
    >>> fig = plot_regression(results)
    >>> len(fig.axes)
    2
    """
    import matplotlib.pyplot as plt

    from .regression import EXACT, METHODS, summarize_regression

    summary = summarize_regression(results) if "repeat" in results else results
    if fig is None:
        fig = plt.figure(figsize=(11, 4.2), layout="constrained")
    ax_error, ax_r2 = fig.subplots(1, 2)
    for method in METHODS:
        rows = summary[summary["method"] == method]
        if rows.empty:
            continue
        if method == EXACT:
            ax_r2.axhline(rows["test_r2"].iloc[0], color="k", ls="--", label=method)
            continue
        ax_error.plot(rows["n_components"], rows["kernel_error"], marker="o", label=method)
        ax_r2.plot(rows["n_components"], rows["test_r2"], marker="o", label=method)
    ax_error.set(xscale="log", yscale="log", xlabel="width (n_components)")
    ax_error.set_ylabel("relative Frobenius error of the kernel")
    ax_r2.set(xscale="log", xlabel="width (n_components)", ylabel="test $R^2$")
    for ax in (ax_error, ax_r2):
        ax.grid(True, which="both", alpha=0.3)
    ax_r2.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig

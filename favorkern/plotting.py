"""Figures of the variance diagnostics (matplotlib is imported inside the functions).

* :func:`plot_mse_vs_m`: closed-form MSE as lines, Monte-Carlo MSE as points with
  error bars, against the number of projections, on log-log axes.
* :func:`plot_trig_positive_ratio`: the Performer paper's Fig. 2, the heat map of
  ``MSE_trig / MSE_positive`` over angle and norm, with the ``l = 1`` slice
  (THEORY.md 9.1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_mse_vs_m", "plot_trig_positive_ratio", "trig_positive_ratio", "feature_map_color"]

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


def plot_mse_vs_m(study, *, relative=True, n_se=2.0, fig=None):
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
    >>> from favorkern.plotting import plot_mse_vs_m
    >>> study = variance_study(n_components=[4, 8], n_trials=100)
    >>> fig = plot_mse_vs_m(study)
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
        ax.set_xlabel("projections m")
        ax.set_ylabel("MSE / k(x,y)²" if relative else "MSE")
        ax.grid(True, which="both", alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Closed form (lines) and Monte Carlo (points, ±{n_se:g} se)", fontsize=10)
    fig.tight_layout()
    return fig


def trig_positive_ratio(angle, norm):
    """``r = MSE_trig / MSE_positive`` for ``|x| = |y| = norm`` at ``angle`` (iid, any m).

    ``r = (1 - e^{-|delta|^2})^2 / (2 SM^4 (1 - e^{-|z|^2}))`` (THEORY.md 2, 9.1),
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

"""Closed-form and Monte-Carlo MSE of the random-feature softmax-kernel estimators.

Runs favorkern.diagnostics.variance_study on pairs of several norms and angles
(in --d dimensions) for the registered estimators of the softmax kernel with iid,
orthogonal and simplex projections at every output width in --n-components (every
map at the same width: hyperbolic and trigonometric maps use two outputs per
projection), prints a compact table, and writes the full study to
DIR/variance.csv, tables to DIR/variance.md, the MSE-vs-width plot to
DIR/variance.png and the Performer Fig. 2 ratio map to
DIR/fig2_ratio.png.  Existing result files are kept unless --overwrite is given;
the results appear only once all of them are written.
"""

from __future__ import annotations

import argparse
import time

from ..feature_maps import feature_map_names
from ._args import int_at_least, int_list, names, seed
from ._files import OutputDir, write_text
from ._progress import progress

DEFAULT_SIZES = (16, 32, 64, 128, 256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d", type=int_at_least(2), default=16, help="input dimension")
    parser.add_argument(
        "--n-components",
        type=int_list,
        default=list(DEFAULT_SIZES),
        metavar="N1,N2,...",
        help="output widths of the feature maps (even: paired maps use two outputs per "
        "projection), comma-separated, each at most once",
    )
    parser.add_argument(
        "--trials", type=int_at_least(2), default=2000, help="Monte-Carlo trials per setting"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the draws")
    parser.add_argument("--out", default="variance-out", metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace variance.csv, variance.md and the PNG files if DIR already holds them "
        "(without it the command refuses before computing anything)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG files")
    parser.add_argument(
        "--feature-maps",
        type=names,
        default=["positive", "hyperbolic", "trigonometric", "optimal"],
        help="feature maps of the registry, comma-separated (those estimating the softmax "
        "kernel: "
        + ", ".join(feature_map_names(kernel="softmax", random=True))
        + "); optimal runs at "
        "each pair's own A*",
    )
    parser.add_argument(
        "--projection",
        type=names,
        default=["gaussian", "orthogonal", "simplex"],
        help="projections, comma-separated: gaussian (iid), orthogonal, simplex, "
        "structured (SORF: Monte Carlo only, no closed form)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def summarize(study):
    """One row per (pair, feature_map, projection): closed form at the extreme widths."""
    from favorkern.diagnostics import study_summary

    return study_summary(study).drop(columns=["norm", "angle_deg"])


def _cell(value):
    if isinstance(value, str):
        return value
    if value != value:  # nan
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        return f"{value:.2e}"
    return f"{value:.3f}"


def format_table(frame) -> str:
    """A data frame as a Markdown table (no tabulate dependency)."""
    header = list(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def agreement_line(study) -> str:
    """How many configurations agree with the closed form within 4.5 standard errors."""
    import numpy as np

    z = study["z"].replace([np.inf, -np.inf], np.nan).dropna()
    exact = int((study["theoretical_mse"] == 0).sum())
    inside = int((z.abs() <= 4.5).sum())
    return (
        f"{inside}/{len(z)} configurations within 4.5 se of the closed form "
        f"(worst |z| = {z.abs().max():.2f}); {exact} with closed-form MSE 0 "
        "(estimator exact there) not counted"
    )


def output_names(args):
    """The files ``favorkern variance`` writes into --out."""
    names = ["variance.csv", "variance.md"]
    if not args.no_plot:
        names += ["variance.png", "fig2_ratio.png"]
    return names


def run(args) -> int:
    with OutputDir(args.out, output_names(args), overwrite=args.overwrite) as out:
        return _run(args, out)


def _run(args, out) -> int:
    import numpy as np

    from favorkern.diagnostics import variance_study

    start = time.perf_counter()
    wrapper = None if args.no_progress else progress
    study = variance_study(
        n_dims=args.d,
        n_components=args.n_components,
        n_trials=args.trials,
        feature_maps=args.feature_maps,
        projection=args.projection,
        random_state=args.seed,
        progress=wrapper,
    )
    summary = summarize(study)
    elapsed = time.perf_counter() - start

    study.to_csv(out.file("variance.csv"), index=False)
    table = format_table(summary)
    agreement = agreement_line(study)
    m_lo, m_hi = min(args.n_components), max(args.n_components)
    legend = (
        f"rel_mse_nK: closed-form MSE / k(x,y)^2 at width n = K; ratio_min/max: "
        f"Monte-Carlo / closed-form MSE over the widths {args.n_components}; max_abs_z: largest "
        f"|empirical - closed form| / se.  d = {args.d}, {args.trials} trials, seed {args.seed}."
    )
    full = study.copy()
    full["angle"] = np.degrees(full["angle"])
    columns = [
        "feature_map",
        "projection",
        "n_components",
        "pair",
        "kernel",
        "theoretical_mse",
        "empirical_mse",
        "se",
        "mom",
        "ratio",
        "z",
    ]
    write_text(
        out.file("variance.md"),
        "# favorkern variance\n\n"
        + legend
        + "\n\n"
        + table
        + "\n\n"
        + agreement
        + "\n\n"
        + "## All settings\n\n"
        + format_table(full[columns])
        + "\n",
    )
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from favorkern.plotting import plot_mse_vs_width, plot_trig_positive_ratio

        fig = plot_mse_vs_width(study)
        fig.savefig(out.file("variance.png"), dpi=110)
        plt.close(fig)
        fig = plot_trig_positive_ratio()
        fig.savefig(out.file("fig2_ratio.png"), dpi=110)
        plt.close(fig)
    out.commit()

    print(table)
    print()
    print(agreement)
    print(f"widths from {m_lo} to {m_hi}; study took {elapsed:.1f} s; wrote {args.out}/variance.*")
    return 0

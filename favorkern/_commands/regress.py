"""Random-feature ridge regression against RBFSampler, Nystroem and exact KernelRidge.

Splits the data into train and test sets, chooses gamma and alpha once by
cross-validating exact kernel ridge regression on a subsample of the training
rows, then fits every method at every width with that gamma and alpha and reports
fit and predict time, test R^2 and the kernel-approximation error (relative
Frobenius error against the exact kernel on at most 2000 held-out rows).  Writes
the table to stdout, DIR/regress.md and DIR/regress.csv, and the plot to
DIR/regress.png.  Existing result files are kept unless --overwrite is given; the
results appear only once all of them are written.

With --stream the data are never held: friedman1 is generated, and a CSV or Parquet
file read, in chunks of --chunksize rows, and streaming random-feature ridge
regression (favorkern.RandomFeatureRidge: two passes, the second on held-out rows)
is fitted at every width, with memory bounded by one chunk plus a few width x width
matrices, so any number of rows works (e.g. --data friedman1 --n-samples
10000000).  Reports test R^2, fit and predict time and the peak memory of the
process per width; the in-memory baselines are not run.
"""

from __future__ import annotations

import argparse
import os

from ._args import fraction, int_at_least, int_list, positive_float, seed
from ._files import OutputDir, UsageError, check_input_file, write_text
from ._progress import progress

DEFAULT_WIDTHS = (16, 64, 256, 1024, 2048)
# Options of the in-memory comparison only, and of --stream only, with their defaults:
# a value other than the default where the option does not apply is refused.
IN_MEMORY_ONLY = {"repeats": 1, "cv_samples": 1000, "max_exact": 5000}
STREAM_ONLY = {"chunksize": 100_000}
# Every file the command can write: --overwrite removes those a run does not write.
ALL_OUTPUTS = ("regress.md", "regress.csv", "regress.png")
# fit_streaming's parameters, as the options that set them
_OPTION_OF = {
    "chunksize": "--chunksize",
    "test_fraction": "--test-size",
    "n_samples": "--n-samples",
    "gamma": "--gamma",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="diabetes",
        metavar="NAME|PATH.csv",
        help="'diabetes' (ships with scikit-learn), 'friedman1' (synthetic, 100000 rows) "
        "or a CSV file with a header row",
    )
    parser.add_argument(
        "--target", default=None, metavar="COLUMN", help="target column of a CSV file"
    )
    parser.add_argument(
        "--kernel",
        choices=("rbf", "softmax"),
        default="rbf",
        help="rbf: exp(-gamma |x - y|^2); softmax: exp(gamma x.y)",
    )
    parser.add_argument(
        "--n-components",
        type=int_list,
        default=",".join(map(str, DEFAULT_WIDTHS)),
        metavar="N1,N2,...",
        help="output widths, comma-separated, each at most once",
    )
    parser.add_argument("--out", default="regress-out", metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace regress.md, regress.csv and regress.png if DIR already holds them "
        "(without it the command refuses before computing anything)",
    )
    parser.add_argument(
        "--n-samples",
        type=int_at_least(10),
        default=None,
        metavar="N",
        help="rows generated for friedman1 (None: 100000); for other data, a random "
        "subset of at most N rows",
    )
    parser.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=IN_MEMORY_ONLY["repeats"],
        help="seeds per random-feature method and width (not with --stream)",
    )
    parser.add_argument("--gamma", type=positive_float, default=None, help="skip the CV of gamma")
    parser.add_argument("--alpha", type=positive_float, default=None, help="skip the CV of alpha")
    parser.add_argument(
        "--cv-samples",
        type=int_at_least(10),
        default=IN_MEMORY_ONLY["cv_samples"],
        help="subsample size for the CV of gamma, alpha (not with --stream)",
    )
    parser.add_argument(
        "--max-exact",
        type=int_at_least(0),
        default=IN_MEMORY_ONLY["max_exact"],
        help="largest training set on which exact KernelRidge is run (not with --stream)",
    )
    parser.add_argument("--test-size", type=fraction, default=0.25, help="held-out fraction")
    parser.add_argument("--seed", type=seed, default=0, help="seed of split, subsamples, features")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="stream the data in chunks through RandomFeatureRidge (bounded memory, any "
        "number of rows; CSV or Parquet files); no in-memory baselines",
    )
    parser.add_argument(
        "--chunksize",
        type=int_at_least(10),
        default=STREAM_ONLY["chunksize"],
        help="rows per chunk (with --stream only)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write regress.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def format_table(summary) -> str:
    """The summary as a Markdown table (no tabulate dependency)."""
    header = ["method", "width", "fit (s)", "predict (s)", "test R^2", "kernel error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.itertuples(index=False):
        width = "exact" if row.n_components != row.n_components else str(int(row.n_components))
        cells = [
            row.method,
            width,
            f"{row.fit_time:.4f}",
            f"{row.predict_time:.4f}",
            f"{row.test_r2:.4f}",
            f"{row.kernel_error:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparisons(summary) -> str:
    """Plain statements comparing the methods of the measured summary."""
    from favorkern.regression import EXACT

    lines = []
    d = summary.attrs["n_dims"]
    trig = summary[summary["method"] == "Trigonometric (orthogonal)"].set_index("n_components")
    rff = summary[summary["method"] == "RBFSampler"].set_index("n_components")
    for m in sorted(set(trig.index) & set(rff.index)):
        ratio = trig.loc[m, "kernel_error"] / rff.loc[m, "kernel_error"]
        tag = f" (= {int(m) // d}d)" if m % d == 0 else ""
        lines.append(
            f"- width {int(m)}{tag}: Trigonometric (orthogonal) kernel error / RBFSampler's = "
            f"{ratio:.3f}"
        )
    exact = summary[summary["method"] == EXACT]
    if exact.empty:
        lines.append("- exact KernelRidge not run (training set larger than --max-exact)")
        return "\n".join(lines)
    exact_r2 = exact["test_r2"].iloc[0]
    for method in summary["method"].unique():
        if method == EXACT:
            continue
        rows = summary[summary["method"] == method].sort_values("n_components")
        close = ((rows["test_r2"] - exact_r2).abs() <= 0.01).to_numpy()
        widths = rows["n_components"].astype(int).to_numpy()
        first = f"width {widths[close.argmax()]}" if close.any() else "no width tried"
        # smallest width from which every larger width tried also stays within 0.01
        stays = [w for i, w in enumerate(widths) if close[i:].all()]
        settled = f"width {stays[0]}" if stays else "no width tried"
        lines.append(
            f"- {method}: test R^2 within 0.01 of exact ({exact_r2:.4f}) first at {first}, "
            f"at every larger width from {settled}"
        )
    return "\n".join(lines)


def format_accuracy(summary) -> str:
    """Held-out R^2 against the width: favorkern's best method next to scikit-learn's best."""
    from favorkern.regression import EXACT, SKLEARN_METHODS

    lines = [
        "| width | best favorkern | R^2 | best scikit-learn | R^2 | difference |",
        "|---|---|---|---|---|---|",
    ]
    models = summary[summary["method"] != EXACT]
    for m in sorted(models["n_components"].unique()):
        at = models[models["n_components"] == m]
        ours = at[~at["method"].isin(SKLEARN_METHODS)]
        theirs = at[at["method"].isin(SKLEARN_METHODS)]
        if ours.empty or theirs.empty:
            continue
        best = ours.loc[ours["test_r2"].idxmax()]
        rival = theirs.loc[theirs["test_r2"].idxmax()]
        lines.append(
            f"| {int(m)} | {best['method']} | {best['test_r2']:.4f} | {rival['method']} "
            f"| {rival['test_r2']:.4f} | {best['test_r2'] - rival['test_r2']:+.4f} |"
        )
    if len(lines) == 2:
        return "(needs a favorkern method and RBFSampler or Nystroem)"
    return "\n".join(lines)


def output_names(args):
    """The files ``favorkern regress`` writes into --out."""
    plot = not (args.no_plot or args.stream)
    return ["regress.md", "regress.csv"] + (["regress.png"] if plot else [])


def run(args) -> int:
    from favorkern.datasets import DATASETS

    if args.data not in DATASETS and (
        args.data.lower().endswith((".csv", ".parquet", ".pq")) or os.path.exists(args.data)
    ):
        check_input_file(args.data, "--data")
    if args.stream and args.data not in DATASETS and args.target is None:
        raise UsageError("--stream with a data file needs --target COLUMN")
    _refuse_options_that_do_not_apply(args)
    with OutputDir(
        args.out, output_names(args), overwrite=args.overwrite, owned=ALL_OUTPUTS
    ) as out:
        return _run_stream(args, out) if args.stream else _run(args, out)


def _refuse_options_that_do_not_apply(args) -> None:
    """A :class:`UsageError` for an option set away from its default where it has no
    effect (the in-memory comparison's options with --stream, and the reverse)."""
    unused = IN_MEMORY_ONLY if args.stream else STREAM_ONLY
    given = [
        "--" + name.replace("_", "-")
        for name, default in unused.items()
        if getattr(args, name) != default
    ]
    if given:
        which = "with --stream" if args.stream else "without --stream"
        verb, them = ("does", "it") if len(given) == 1 else ("do", "them")
        raise UsageError(f"{', '.join(given)} {verb} not apply {which}; leave {them} out")


def _options(message: str) -> str:
    """fit_streaming's message with its parameters named as this command's options
    (``chunksize=10`` becomes ``--chunksize 10``)."""
    import re

    def option(found):
        return _OPTION_OF[found.group(1)] + (" " if found.group(2) else "")

    names = "|".join(_OPTION_OF)
    return re.sub(rf"(?<![\w-])({names})\b(=?)", option, message)


def _run_stream(args, out) -> int:
    import pandas as pd

    from favorkern.regression import fit_streaming

    bar = None if args.no_progress else progress
    rows = []
    for width in args.n_components:
        try:
            result = fit_streaming(
                args.data,
                target=args.target,
                n_samples=args.n_samples,
                n_components=width,
                kernel=args.kernel,
                gamma=args.gamma,
                alphas=None if args.alpha is None else [args.alpha],
                test_fraction=args.test_size,
                chunksize=args.chunksize,
                random_state=args.seed,
                progress=bar,
            )
        except ValueError as exc:  # name the options, not the function's parameters
            raise UsageError(_options(str(exc))) from None
        rows.append(
            {
                "n_components": width,
                "test_r2": result["test_r2"],
                "fit_s": result["fit_time"],
                "predict_s": result["predict_time"],
                "peak_rss_mb": result["peak_rss_mb"],
                "gamma": result["gamma"],
                "alpha": result["alpha"],
                "n_train": result["n_train"],
                "n_test": result["n_test"],
            }
        )
    table = pd.DataFrame(rows)
    note = (
        f"{args.data}, kernel {args.kernel}, streamed in chunks of {args.chunksize} rows: "
        f"{rows[0]['n_train']} training and {rows[0]['n_test']} held-out rows; peak_rss_mb is "
        "the peak resident memory of the process so far (it includes the earlier widths)"
    )
    text = note + "\n\n" + format_frame(table)
    print(text)
    write_text(out.file("regress.md"), f"# favorkern regress --stream: {args.data}\n\n{text}\n")
    table.to_csv(out.file("regress.csv"), index=False)
    written = out.commit()
    print(f"\nwrote {', '.join(written)}")
    return 0


def format_frame(frame) -> str:
    """A data frame as a Markdown table, numbers to 4 significant digits."""
    header = list(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(args, out) -> int:
    from favorkern.datasets import load_dataset
    from favorkern.plotting import plot_regression
    from favorkern.regression import compare_regression, summarize_regression

    X, y, name = load_dataset(
        args.data, target=args.target, n_samples=args.n_samples, random_state=args.seed
    )
    bar = None if args.no_progress else progress
    results = compare_regression(
        X,
        y,
        kernel=args.kernel,
        n_components=args.n_components,
        gamma=args.gamma,
        alpha=args.alpha,
        test_size=args.test_size,
        max_exact=args.max_exact,
        cv_samples=args.cv_samples,
        n_repeats=args.repeats,
        random_state=args.seed,
        progress=bar,
    )
    summary = summarize_regression(results)
    info = results.attrs
    notes = [
        f"{name}, kernel {args.kernel}: gamma = {info['gamma']:.6g}, alpha = {info['alpha']:.6g} "
        f"(cross-validated exact KernelRidge on <= {args.cv_samples} training rows unless given)",
        f"train {info['n_train']} rows, test {info['n_test']} rows; kernel error on "
        f"{info['n_error_rows']} test rows; {args.repeats} seed(s) per random-feature row; "
        "Nystroem uses at most one landmark per training row",
    ]
    if info["exact_skipped"]:
        notes.append(f"exact KernelRidge skipped: {info['n_train']} training rows > --max-exact")
    repeats = f"mean of {args.repeats} seeds" if args.repeats > 1 else "one seed"
    text = "\n\n".join(
        [
            "\n".join(notes),
            format_table(summary),
            "Comparisons:\n" + format_comparisons(summary),
            f"Accuracy against the width (test R^2, {repeats}; the same gamma and alpha "
            "for every method):\n" + format_accuracy(summary),
        ]
    )
    print(text)

    write_text(
        out.file("regress.md"), f"# favorkern regress: {name}, kernel {args.kernel}\n\n{text}\n"
    )
    summary.to_csv(out.file("regress.csv"), index=False)
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plot_regression(summary, title=f"{name}, {args.kernel} kernel")
        figure.savefig(out.file("regress.png"), dpi=120)
        plt.close(figure)
    written = out.commit()
    print(f"\nwrote {', '.join(written)}")
    return 0

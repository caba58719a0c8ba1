"""Run the three jobs on built-in defaults and write a self-contained HTML report.

The variance study (closed-form against Monte-Carlo MSE, Performer Fig. 2),
FAVOR+ attention against exact softmax attention (time and error), and kernel ridge
regression with random features on the diabetes data that ships with scikit-learn.
Writes DIR/index.html (figures embedded, open it in any browser) and the raw tables
as DIR/*.csv.  --quick takes well under two minutes on two cores; the default a few
minutes.  Existing result files are kept unless --overwrite is given; the results
appear only once all of them are written.
"""

from __future__ import annotations

import argparse
import os
import time

from ._args import seed
from ._files import OutputDir
from ._progress import progress

# What write_report writes: index.html and one CSV per raw table.
OUTPUT_NAMES = (
    "index.html",
    "variance_study.csv",
    "attention_timing.csv",
    "attention_error_vs_m.csv",
    "regression_results.csv",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``favorkern report``."""
    parser.add_argument("--out", default="report", metavar="DIR", help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace index.html and the CSV files if DIR already holds them (without it "
        "the command refuses before computing anything)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller studies (under two minutes)")
    # Seconds-long smoke run for the test suite; not part of the documented interface.
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=seed, default=0, help="seed of every random draw")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Write the report; returns the exit status."""
    with OutputDir(args.out, OUTPUT_NAMES, overwrite=args.overwrite) as out:
        from dataclasses import replace

        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window

        from favorkern.report import PRESETS, write_report

        preset = "tiny" if args.tiny else "quick" if args.quick else "full"
        config = replace(PRESETS[preset], seed=args.seed)
        start = time.perf_counter()
        write_report(
            out.staging,
            preset=preset,
            config=config,
            progress=None if args.no_progress else progress,
        )
        elapsed = time.perf_counter() - start
        out.commit()
    path = os.path.join(args.out, "index.html")
    print(f"wrote {path} in {elapsed:.1f} s (preset {preset}); open it in a browser:")
    print(f"  file://{os.path.abspath(path)}")
    return 0

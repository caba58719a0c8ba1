"""Run the report's jobs and write the page and the raw tables: :func:`write_report`."""

from __future__ import annotations

import datetime
import os
import time

from .compute import with_progress
from .config import PRESETS, ReportConfig
from .render import machine_description, render_html
from .sections import attention_section, regression_section, variance_section

__all__ = ["JOBS", "write_report"]

#: The report's jobs, in page order: name -> function returning its Section.
JOBS = {
    "variance": variance_section,
    "attention": attention_section,
    "regression": regression_section,
}


def write_report(out_dir="report", *, preset="quick", config=None, jobs=tuple(JOBS), progress=None):
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
        if job not in JOBS:
            raise ValueError(f"jobs must be among {list(JOBS)}, got {job!r}")
    if not jobs:
        raise ValueError("jobs must name at least one job")

    start = time.perf_counter()
    sections = []
    for job in with_progress(progress, jobs, len(jobs), "report"):
        sections.append(JOBS[job](config, progress=progress))
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
        footer=f"Machine: {machine_description()}. Seed {config.seed}.",
    )
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path

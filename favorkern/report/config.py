"""The definitions of the report: its sizes (:class:`ReportConfig`, :data:`PRESETS`)
and the container of one job's results (:class:`Section`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReportConfig", "PRESETS", "Section"]


@dataclass(frozen=True)
class ReportConfig:
    """Sizes of the three jobs of :func:`write_report` (see :data:`PRESETS`).

    Parameters
    ----------
    variance_dims : int
        Dimension ``d`` of the default pairs of the variance study.
    variance_n_components : tuple of int
        Output widths ``m`` of the feature maps in the variance study.
    variance_trials : int
        Monte-Carlo trials per (projection, width).
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
    attention_error_n_components : tuple of int
        Output widths ``m`` of the error-against-``m`` study.
    attention_error_seeds : int
        Independent projections (and inputs) averaged per point of that study.
    regression_data : str
        Data set name for :func:`favorkern.datasets.load_dataset`.
    regression_n_components : tuple of int
        Output widths compared by :func:`favorkern.regression.compare_regression`.
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
    variance_n_components: tuple = (16, 32, 64, 128, 256)
    variance_trials: int = 2000
    variance_estimators: tuple = ("positive", "hyperbolic", "trigonometric")
    variance_projections: tuple = ("gaussian", "orthogonal")
    attention_lengths: tuple = (256, 1024, 4096, 8192)
    attention_dims: int = 64
    attention_repeats: int = 3
    attention_error_length: int = 1024
    attention_error_n_components: tuple = (16, 32, 64, 128, 256)
    attention_error_seeds: int = 3
    regression_data: str = "diabetes"
    regression_n_components: tuple = (16, 64, 256, 1024, 2048)
    regression_cv_samples: int = 1000
    regression_repeats: int = 3
    seed: int = 0


#: Built-in sizes: ``"full"`` (a few minutes), ``"quick"`` (well under two minutes on
#: two cores) and ``"tiny"`` (seconds; for tests).
PRESETS = {
    "full": ReportConfig(),
    "quick": ReportConfig(
        variance_n_components=(16, 32, 64, 128, 256),
        variance_trials=800,
        attention_lengths=(256, 1024, 4096),
        attention_error_n_components=(16, 32, 64, 128, 256),
        attention_error_seeds=2,
        regression_n_components=(16, 64, 256, 1024),
        regression_cv_samples=400,
        regression_repeats=1,
    ),
    "tiny": ReportConfig(
        variance_dims=8,
        variance_n_components=(4, 16),
        variance_trials=100,
        attention_lengths=(64, 256),
        attention_dims=16,
        attention_repeats=1,
        attention_error_length=128,
        attention_error_n_components=(8, 32),
        attention_error_seeds=1,
        regression_n_components=(16, 64),
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

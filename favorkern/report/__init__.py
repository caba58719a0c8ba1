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

The package keeps computing apart from drawing and writing:

* :mod:`favorkern.report.config`: :class:`ReportConfig`, :data:`PRESETS`, :class:`Section`;
* :mod:`favorkern.report.compute`: the runs, returning tables and numbers;
* :mod:`favorkern.report.render`: cell formatting, HTML, the style sheet, the machine;
* :mod:`favorkern.report.sections`: each section from its tables, its figures
  (drawn by :mod:`favorkern.plotting`) and the prose that explains them;
* :mod:`favorkern.report.write`: :func:`write_report`.

pandas and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

from .config import PRESETS, ReportConfig, Section
from .render import render_html
from .sections import attention_section, regression_section, variance_section
from .write import write_report

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

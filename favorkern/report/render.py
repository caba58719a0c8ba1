"""The report's page: cell formatting, HTML tables, figures as data URIs, the style
sheet, the machine description and :func:`render_html`, which assembles sections."""

from __future__ import annotations

import base64
import html
import io
import os
import platform

import numpy as np

__all__ = [
    "CSS",
    "format_number",
    "format_table",
    "figure_data_uri",
    "table_html",
    "machine_description",
    "render_html",
]

# Cells: whole numbers below a million print whole; other values outside
# [1e-3, 1e4) print in scientific notation, which stays short at any magnitude.
_WHOLE_BELOW = 1e6
_SCIENTIFIC_ABOVE = 1e4
_SCIENTIFIC_BELOW = 1e-3
# Figures at 96 dpi: one PNG pixel per CSS pixel on a standard screen.
_DPI = 96


def format_number(value):
    """A table cell: integers as such, floats to 3 significant digits, NaN as a dash.

    Examples
    --------
    >>> from favorkern.report.render import format_number
    >>> [format_number(v) for v in (3, 2.0, 0.123456, 12345.6, 1e-5, float("nan"), "x")]
    ['3', '2', '0.123', '1.23e+04', '1.00e-05', '–', 'x']
    """
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–" if value is None or np.isnan(value) else str(value)
    if (
        isinstance(value, (int, np.integer))
        or float(value).is_integer()
        and abs(value) < _WHOLE_BELOW
    ):
        return str(int(value))
    value = float(value)
    if value != 0 and (abs(value) >= _SCIENTIFIC_ABOVE or abs(value) < _SCIENTIFIC_BELOW):
        return f"{value:.2e}"
    return f"{value:.3g}"


def format_table(frame):
    """A copy of ``frame`` with every cell a string formatted by :func:`format_number`.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.report.render import format_table
    >>> format_table(pd.DataFrame({"m": [16, 256], "error": [0.3125, 0.0781]})).values.tolist()
    [['16', '0.312'], ['256', '0.0781']]
    """
    return frame.apply(lambda column: column.map(format_number)).astype(str)


def figure_data_uri(fig, dpi=_DPI):
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from favorkern.report.render import figure_data_uri
    >>> figure_data_uri(plt.figure(figsize=(1, 1)))[:22]
    'data:image/png;base64,'
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(caption, frame):
    """``frame`` as an HTML table with ``caption``, in a scrolling wrapper.

    Examples
    --------
    >>> import pandas as pd
    >>> from favorkern.report.render import table_html
    >>> table_html("a < b", pd.DataFrame({"x": ["1"]})).count("<caption>a &lt; b</caption>")
    1
    """
    return (
        '<div class="table-wrap">'
        + frame.to_html(index=False, border=0, escape=True)
        .replace('<table class="dataframe">', "<table>", 1)
        .replace("<table>", f"<table><caption>{html.escape(caption)}</caption>", 1)
        + "</div>"
    )


#: The page's style sheet, inlined so that the page needs no other file.
CSS = """
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


def machine_description():
    """Versions and hardware, for the footer (timings mean nothing without them).

    Examples
    --------
    >>> from favorkern.report.render import machine_description
    >>> machine_description().startswith("favorkern ")
    True
    """
    import numba
    import scipy
    import sklearn

    from .. import __version__

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
        f"<style>{CSS}</style>",
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
            parts.append(table_html(caption, frame))
        if section.elapsed:
            parts.append(f'<p class="meta">This section took {section.elapsed:.1f} s.</p>')
        parts.append("</section>")
    if footer:
        parts.append(f"<footer><p>{html.escape(footer)}</p></footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)

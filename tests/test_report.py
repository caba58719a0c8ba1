"""Tests of favorkern.report and the ``favorkern report`` command."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import matplotlib
import pandas as pd
import pytest
from report_run import tiny_report

from favorkern.report import PRESETS, ReportConfig, Section, render_html, write_report

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects the images, tables, sections and every external reference of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.sections, self.external = [], [], []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables += 1
        elif tag == "section":
            self.sections.append(attrs.get("id"))
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None and not value.startswith(("data:", "#")):
                self.external.append(value)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``favorkern report --tiny`` run once, through the command line."""
    return tiny_report(tmp_path_factory)


def test_command_writes_self_contained_page(report, capsys):
    status, out = report
    assert status == 0
    page_text = (out / "index.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(page_text)
    assert page.sections == ["variance", "attention", "regression"]
    # Self-contained: nothing is loaded from outside the file.
    assert page.external == []
    # Three variance figures, two attention figures, one regression figure; all PNGs.
    assert len(page.images) == 6
    for image in page.images:
        header, payload = image["src"].split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(payload)[:8] == PNG_MAGIC
        assert image["alt"]
    assert page.tables == 3
    # An explanation beside each figure.
    assert page_text.count('<div class="explain">') == 6
    assert "preset: tiny" in page_text and "Machine:" in page_text
    for name in (
        "variance_study",
        "attention_timing",
        "attention_error_vs_m",
        "regression_results",
    ):
        assert not pd.read_csv(out / f"{name}.csv").empty


def test_report_numbers_are_sane(report):
    _, out = report
    study = pd.read_csv(out / "variance_study.csv")
    assert (study["theoretical_mse"] >= 0).all()
    timing = pd.read_csv(out / "attention_timing.csv")
    assert list(timing["L"]) == list(PRESETS["tiny"].attention_lengths)
    # m = 256 positive features on N(0, 0.5^2) inputs: errors of a few percent.
    assert (timing["median row error"] < 0.5).all()
    results = pd.read_csv(out / "regression_results.csv")
    assert results["test_r2"].max() > 0.3  # diabetes: kernel ridge reaches about 0.4-0.5


def test_tiny_is_hidden_and_quick_documented():
    from favorkern.cli import build_parser

    parser = build_parser({"report": ""})
    sub = parser._subparsers._group_actions[0].choices["report"]
    text = sub.format_help()
    assert "--quick" in text and "--out" in text
    assert "--tiny" not in text
    args = parser.parse_args(["report"])
    assert args.out == "report" and not args.quick


def test_render_html_escapes_and_lays_out():
    section = Section(
        "s1",
        "<Title>",
        "<p>intro</p>",
        figures=[("data:image/png;base64,AAAA", "<p>why</p>")],
        tables=[("a < b", pd.DataFrame({"x": ["1"]}))],
    )
    page = render_html([section], title="T & U", subtitle="sub", footer="foot")
    assert "<title>T &amp; U</title>" in page
    assert "&lt;Title&gt;" in page
    assert "<caption>a &lt; b</caption>" in page
    assert re.search(r'<div class="figure"><img src="data:image/png;base64,AAAA"', page)
    assert page.rstrip().endswith("</html>")


def test_write_report_errors(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        write_report(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="jobs"):
        write_report(tmp_path, preset="tiny", jobs=["nothing"])
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path, preset="tiny", jobs=[])
    with pytest.raises(TypeError, match="ReportConfig"):
        write_report(tmp_path, config={"seed": 1})
    assert not (tmp_path / "index.html").exists()


def test_quick_preset_is_smaller_than_full():
    full, quick = PRESETS["full"], PRESETS["quick"]
    assert isinstance(quick, ReportConfig)
    assert quick.variance_trials < full.variance_trials
    assert max(quick.attention_lengths) < max(full.attention_lengths)
    assert max(quick.regression_n_components) < max(full.regression_n_components)

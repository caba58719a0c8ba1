"""One ``favorkern report --tiny`` run per test session, shared by the report tests."""

from __future__ import annotations

from favorkern.cli import main

_RUNS = {}


def tiny_report(tmp_path_factory):
    """``(exit status, output directory)`` of ``favorkern report --tiny`` (run once)."""
    if "tiny" not in _RUNS:
        out = tmp_path_factory.mktemp("report")
        status = main(["report", "--tiny", "--no-progress", "--out", str(out)])
        _RUNS["tiny"] = (status, out)
    return _RUNS["tiny"]

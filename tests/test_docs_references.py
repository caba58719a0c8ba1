"""Every reference in the sources resolves: Sphinx labels, documents, cited files, objects.

Docstrings and comments cite the documentation by Sphinx label (``:ref:`theory-...```),
the repository by path (``benchmarks/bench_attention.py``) and the code by dotted name
(``:func:`favorkern.draw_projection```, and the module paths of the paper map). These
tests read the sources as text, so they also check the private modules and the comments
that Sphinx never renders, and they run without building the documentation.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Top-level folders of the repository: a cited path that starts with one is ours.
TOP_LEVEL = ("favorkern", "tests", "benchmarks", "examples", "docs")
#: Folders Sphinx writes; their text is generated, not written.
GENERATED = ("_build", "generated", "auto_examples")
#: The theory notes the documentation was written from are not part of the project.
NOTES = "THEORY" + ".md"

_REF = re.compile(r":ref:`([^`]+)`")
_DOC = re.compile(r":doc:`([^`]+)`")
_OBJECT = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_LABEL = re.compile(r"^\.\. _([^:]+):\s*$", re.M)
_PATH = re.compile(
    r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.(?:py|rst|md|txt|toml|cfg|json|ya?ml|ipynb))\b"
)
_DOTTED = re.compile(r"``(favorkern(?:\.\w+)+)``")


def _sources():
    """``(path, text)`` of every Python source and every written documentation page."""
    paths = [
        path
        for folder in ("favorkern", "tests", "benchmarks", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    paths += [path for path in sorted(DOCS.rglob("*.rst")) if not _generated(path)]
    paths += [ROOT / "README.md"]
    this = Path(__file__).resolve()  # its patterns and messages are not references
    return [
        (path, path.read_text(encoding="utf-8"))
        for path in paths
        if path.is_file() and path.resolve() != this
    ]


def _generated(path):
    return any(part in GENERATED for part in path.relative_to(DOCS).parts)


def _labels():
    """Every Sphinx label: the written ones and sphinx-gallery's, one per example."""
    labels = set()
    for path in DOCS.rglob("*.rst"):
        if not _generated(path):
            labels.update(label.lower() for label in _LABEL.findall(path.read_text("utf-8")))
    for example in (ROOT / "examples").glob("*.py"):
        labels.add(f"sphx_glr_auto_examples_{example.name}".lower())
    return labels


def _target(role_text):
    """The target of a role: ``title <target>`` or ``target``."""
    match = re.fullmatch(r"(?s).*<([^<>]+)>", role_text)
    return (match.group(1) if match else role_text).strip()


def _where(path, text, index):
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, index) + 1}"


def test_no_source_cites_the_theory_notes():
    found = [
        _where(path, text, match.start())
        for path, text in _sources()
        for match in re.finditer(re.escape(NOTES), text)
    ]
    assert found == [], f"cite docs/theory.rst by label (:ref:`theory-...`) instead: {found}"


def test_every_cited_label_exists():
    labels = _labels()
    assert {"theory", "theory-attention", "paper-map"} <= labels
    missing = [
        f"{_where(path, text, match.start())}: {_target(match.group(1))}"
        for path, text in _sources()
        for match in _REF.finditer(text)
        if _target(match.group(1)).lower() not in labels
    ]
    assert missing == [], f"no such Sphinx label: {missing}"


def test_every_cited_document_exists():
    missing = []
    for path, text in _sources():
        for match in _DOC.finditer(text):
            target = _target(match.group(1))
            if target.startswith("/") or path.suffix == ".py":
                # docstrings are rendered in docs/generated: only absolute names are safe
                candidates = [DOCS / f"{target.lstrip('/')}.rst"]
            else:
                candidates = [(path.parent / f"{target}.rst").resolve()]
            if not any(candidate.is_file() for candidate in candidates):
                missing.append(f"{_where(path, text, match.start())}: {target}")
    assert missing == [], f"no such document (docstrings need an absolute /name): {missing}"


def test_every_cited_repository_file_exists():
    missing = [
        f"{_where(path, text, match.start())}: {match.group(1)}"
        for path, text in _sources()
        for match in _PATH.finditer(text)
        if match.group(1).split("/")[0] in TOP_LEVEL and not (ROOT / match.group(1)).exists()
    ]
    assert missing == [], f"no such file in the repository: {missing}"


def _resolve(dotted):
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name and not error.name.startswith("favorkern"):
                pytest.skip(f"{dotted} needs {error.name}")
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_every_cited_favorkern_object_exists():
    cited = {}
    for path, text in _sources():
        for pattern in (_OBJECT, _DOTTED):
            for match in pattern.finditer(text):
                target = _target(match.group(1)).lstrip("~").rstrip("()")
                if target.startswith("favorkern."):
                    cited.setdefault(target, _where(path, text, match.start()))
    assert len(cited) > 50
    missing = []
    for target, where in sorted(cited.items()):
        try:
            _resolve(target)
        except (ImportError, AttributeError):
            missing.append(f"{where}: {target}")
    assert missing == [], f"no such object: {missing}"


def test_the_paper_map_names_code_for_every_row():
    text = (DOCS / "paper_map.rst").read_text(encoding="utf-8")
    rows = [row for row in text.split("\n   * - ")[1:] if not row.startswith("Result")]
    assert len(rows) >= 25
    for row in rows:
        cells = row.split("\n     - ")
        assert len(cells) == 3, row
        assert re.search(r"favorkern\.|:(?:func|class|meth):", cells[2]), row

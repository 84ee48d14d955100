"""Every page is main() + *_controls() + render_*(): module level holds only imports, constants,
definitions and the one main() call (the shape the house asks of every page)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PAGES = sorted((Path(__file__).resolve().parent.parent / "app_pages").glob("*.py"))


def top_level_problems(tree: ast.Module) -> list[str]:
    problems = []
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    *rest, last = body
    if ast.unparse(last) != "main()":
        problems.append(f"the module must end with main(), not {ast.unparse(last)!r}")
    for node in rest:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ([t] if isinstance(t, ast.Name) else getattr(t, "elts", []))
                     if isinstance(n, ast.Name)]
            if names and all(name.isupper() or name.startswith("_") and name[1:].isupper() for name in names):
                continue
        problems.append(f"line {node.lineno}: {ast.unparse(node)[:60]!r} is neither an import, a constant nor a definition")
    return problems


@pytest.mark.parametrize("path", PAGES, ids=[p.stem for p in PAGES])
def test_a_page_is_functions_plus_one_main_call(path):
    tree = ast.parse(path.read_text())
    assert not top_level_problems(tree), top_level_problems(tree)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "main" in functions
    if path.stem != "home":  # the demo pages draw results and take settings through small functions
        assert any(name.startswith("render_") for name in functions), sorted(functions)
        assert any(name.endswith("_controls") or name.endswith("_control") for name in functions), sorted(functions)
    source = path.read_text()
    assert "import torch" not in source, "no torch math in pages"
    assert "@st.fragment" not in source, "pages use the frame's one polling fragment"


def test_the_shape_check_catches_top_level_work():
    assert top_level_problems(ast.parse("import streamlit as st\nst.title('x')\nmain()\n"))
    assert top_level_problems(ast.parse("x = compute()\nmain()\n"))
    assert not top_level_problems(ast.parse('"""doc"""\nimport a\nLIMIT = 3\ndef main():\n    pass\nmain()\n'))

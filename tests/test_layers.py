"""The layers' import rules: the core never reaches the notebook layer, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nbflow"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_outside_the_notebook_layer_imports_it():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "notebook" or relative == Path("__init__.py"):
            continue  # the package's own %load_ext entry points hand over to the layer
        reached = {name for name in _imports(path) if name == "nbflow.notebook" or name.startswith("nbflow.notebook.")}
        if reached:
            offenders[str(relative)] = sorted(reached)
    assert offenders == {}

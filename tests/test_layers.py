"""The tree's layers: imports flow one way, conf → experiments → actors → alignment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.lab import ROOT

# what each layer may not import: every layer above it (alignment is the science, with no Ray)
FORBIDDEN = {"actors": ("experiments", "run", "benchmarks", "tests"),
             "alignment": ("actors", "experiments", "run", "benchmarks", "tests", "ray")}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (function-level imports included), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_from_a_layer_above_it(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    upward = [f"{f.relative_to(ROOT)}:{line}: imports {mod}" for f in files for line, mod in imported_modules(f)
              if mod.split(".")[0] in FORBIDDEN[layer]]
    assert not upward, "\n".join(upward)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from experiments.config import LabConfig\n")
    assert (4, "experiments.config") in imported_modules(f)

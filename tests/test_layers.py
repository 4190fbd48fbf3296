"""The tree's layers: imports flow one way, conf → experiments → actors → alignment; inside
experiments/, commands and reports → stages → evaluation → runtime; and no module imports its way
back to itself, counting the imports inside functions."""

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


# the rooms inside experiments/: what each may not import (the runtime every stage uses knows no
# evaluation, stage, command or report; the evaluation knows no stage; a stage knows no command)
ROOMS = {"runtime": ("evaluation", "stages", "commands", "reports"),
         "evaluation": ("stages", "commands", "reports"),
         "stages": ("commands",)}


def test_the_rooms_of_experiments_exist_and_hold_at_most_15_modules():
    rooms = [d for d in sorted((ROOT / "experiments").iterdir()) if (d / "__init__.py").is_file()]
    assert {d.name for d in rooms} >= {*ROOMS, "commands", "reports"}
    for folder in (ROOT / "experiments", *rooms):
        modules = [f for f in folder.glob("*.py") if f.name != "__init__.py"]
        assert len(modules) <= 15, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_no_room_of_experiments_imports_a_room_it_serves(room):
    files = sorted((ROOT / "experiments" / room).rglob("*.py"))
    assert files
    banned = tuple(f"experiments.{r}" for r in ROOMS[room])
    wrong = [f"{f.relative_to(ROOT)}:{line}: imports {mod}" for f in files for line, mod in module_imports(f)
             if mod.startswith(banned) and mod.split(".")[1] in ROOMS[room]]
    assert not wrong, "\n".join(wrong)


def test_validation_reads_only_the_config_and_the_science():
    allowed = ("experiments.config", "experiments.choices")
    own = [mod for _, mod in module_imports(ROOT / "experiments" / "validation.py")
           if mod.split(".")[0] in ("experiments", "actors", "run")
           and not any(mod == a or mod.startswith(a + ".") for a in allowed)]
    assert not own, own


PACKAGES = ("alignment", "actors", "experiments")


def module_imports(path: Path) -> list[tuple[int, str]]:
    """``imported_modules`` with ``from pkg import name`` read as ``pkg.name`` too (a module or a
    name in it) and relative imports made absolute."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name.removesuffix(".__init__")
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    """The lab's modules and the lab modules each imports, at any depth (function level included)."""
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
             for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}

    def own(name: str) -> str | None:  # the module a dotted name lives in (``pkg.mod.func`` -> ``pkg.mod``)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, f in files.items():
        targets = {own(name) for _, name in module_imports(f)}
        graph[mod] = {t for t in targets if t and t != mod and not mod.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    group.append(top)
                    if top == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_lab_has_no_import_cycle():
    graph = import_graph()
    assert "experiments.stages.ppo" in graph and "alignment.losses.gae" in graph["experiments.stages.ppo"]
    assert not cycles(graph), "\n".join(" <-> ".join(c) for c in cycles(graph))


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": {"d2"}, "d2": {"a"}}
    assert cycles(graph) == []
    graph["c"] = {"a"}  # e.g. ``def f(): from a import g`` in c
    assert cycles(graph) == [["a", "b", "c"]]


def test_module_imports_reads_from_package_imports():
    f = ROOT / "experiments" / "stages" / "chain.py"
    mods = {mod for _, mod in module_imports(f)}
    assert {"experiments.stages.bon", "experiments.stages.dpo"} <= mods  # ``from experiments.stages import bon``

"""The package's layers, drawn from its own imports: no circle, no arrow back up, every project import at the top.

A module may import from its own layer or the layers below it. The layers, bottom up, are those of README.md's
layout section; a new module is placed in one here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from .conftest import ROOT

LAYERS = {
    "declarations and pure helpers": (
        "titlegen", "titlegen.backends", "titlegen.arguments", "titlegen.characters", "titlegen.loops",
        "titlegen.loss", "titlegen.cpu", "titlegen.distributed",
    ),
    "data": (
        "titlegen.data", "titlegen.corpus", "titlegen.config", "titlegen.progress", "titlegen.spans",
        "titlegen.preprocessing",
    ),
    "models and tokenizers": (
        "titlegen.tokenizer", "titlegen.model_folder", "titlegen.lora", "titlegen.modeling", "titlegen.prune",
        "titlegen.memory",
    ),
    "outputs and run folders": ("titlegen.outputs", "titlegen.checkpoints", "titlegen.memory_advice"),
    "generation, engines, scoring and training": (
        "titlegen.generation", "titlegen.strategies", "titlegen.engines.ct2", "titlegen.engines.export", "titlegen.engines", "titlegen.metrics",
        "titlegen.comparison", "titlegen.plotting", "titlegen.showcase", "titlegen.callbacks", "titlegen.trainer",
        "titlegen.rl", "titlegen.rl.losses", "titlegen.rl.reward", "titlegen.rl.rollout", "titlegen.rl.config",
        "titlegen.rl.run", "titlegen.serving", "titlegen.serving.batching", "titlegen.serving.schema",
        "titlegen.serving.served_model", "titlegen.serving.app", "titlegen.serving.server",
    ),
    "the command shell": ("titlegen.lifecycle",),
    "recipes and commands": (
        "titlegen.recipes", "titlegen.recipes.train", "titlegen.recipes.predict", "titlegen.recipes.rl",
        "titlegen.recipes.compare", "titlegen.recipes.serve", "titlegen.cli",
    ),
}  # fmt: skip
FLOOR = {module: floor for floor, modules in enumerate(LAYERS.values()) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "titlegen").rglob("*.py"))}


def project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, whether the import sits inside a function) for each project import."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "titlegen":
                for alias in child.names:  # `from titlegen import lifecycle` imports the module titlegen.lifecycle
                    name = f"{child.module}.{alias.name}"
                    found.append((name if name in MODULES else child.module, child.lineno, inside))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inside) for a in child.names if a.name.split(".")[0] == "titlegen")
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


GRAPH = {name: {target for target, _, _ in project_imports(path) if target != name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(FLOOR)) == [], "place each new module in a layer of LAYERS (and README.md)"
    assert sorted(set(FLOOR) - set(MODULES)) == [], "LAYERS names modules that no longer exist"


def test_every_project_import_is_at_the_top_of_its_module():
    local = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for path in MODULES.values()
        for target, line, in_function in project_imports(path)
        if in_function
    ]
    assert local == []


def test_no_import_goes_back_up_a_layer():
    names = list(LAYERS)
    upward = [
        f"{module} ({names[FLOOR[module]]}) imports {target} ({names[FLOOR[target]]})"
        for module, targets in GRAPH.items()
        for target in targets
        if FLOOR[target] > FLOOR[module]
    ]
    assert upward == []


def test_the_imports_hold_no_circle():
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            walk(target, [*path, module])
        done.add(module)

    for module in MODULES:
        walk(module, [])


@pytest.mark.parametrize("module", [*MODULES, *(f"bench.{p.stem}" for p in sorted((ROOT / "bench").glob("*.py")))])
def test_every_module_of_the_package_and_the_benchmarks_imports(module):
    """Every name a module imports exists: a name moved elsewhere fails here, not minutes into a benchmark."""
    importlib.import_module(module)

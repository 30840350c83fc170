"""The package's layering: every import, lazy ones included, points one way.

data -> model -> run folder -> tflite -> runtime -> daemon: no module of `fer_edge`, and no
first-level part of it (`train`, `convert`, `edge_runtime`, `spec`, ...), imports one that
imports it back. The edge runtime never imports TensorFlow or the training side.
"""
from __future__ import annotations

import ast
import gc
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer_edge"


def parse(path: Path) -> ast.AST:
    """ast.parse with the garbage collector paused: on Python 3.11 a finalizer that runs inside the
    parser (LiteRT's Delegate.__del__, from earlier tests) fails it with "AST constructor recursion
    depth mismatch"."""
    gc.collect()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The fer_edge modules `path` imports anywhere in its body, resolved to existing modules."""
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import module` imports that module; `from module import name` the module
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from pkg import module` or `from module import name`
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_module_imports_one_that_imports_it_back(graph):
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail("import cycle: " + " -> ".join(error.args[1]))


def test_no_part_of_the_package_imports_one_that_imports_it_back(graph):
    parts: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if module != "fer_edge":
            parts.setdefault(part(module), set()).update(part(d) for d in deps if d != "fer_edge" and part(d) != part(module))
    try:
        list(graphlib.TopologicalSorter(parts).static_order())
    except graphlib.CycleError as error:
        pytest.fail("cycle between parts of fer_edge: " + " -> ".join(error.args[1]))


def test_edge_runtime_needs_neither_tensorflow_nor_the_training_side(graph):
    runtime = [m for m in graph if part(m) == "edge_runtime"]
    assert runtime
    for module in runtime:
        assert not {d for d in graph[module] if part(d) in ("train", "convert", "cli")}, module
        source = (PACKAGE.parent / (module.replace(".", "/") + ".py"))
        source = source if source.exists() else source.with_suffix("") / "__init__.py"
        tree = parse(source)
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(name.split(".")[0] in ("tensorflow", "tf_keras", "keras") for name in imported), module


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself can fail: two modules importing each other lazily form a cycle."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from fer_edge.b import g\n")
    b.write_text("import fer_edge.a\n")
    modules = {"fer_edge.a", "fer_edge.b"}
    deps = {"fer_edge.a": imports_of(a, modules), "fer_edge.b": imports_of(b, modules)}
    assert deps == {"fer_edge.a": {"fer_edge.b"}, "fer_edge.b": {"fer_edge.a"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(deps).static_order())

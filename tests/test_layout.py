"""The layering of the package, read from the source: a module imports only modules of its own layer or below
(function-level imports included), and no two modules import each other, directly or around a cycle."""

import ast
from pathlib import Path

import genzoo

PACKAGE = Path(genzoo.__file__).parent

# Bottom to top. A module may import modules of its own layer or of the layers below it, never above.
LAYERS = [
    {"_version", "errors", "storage", "theory", "mixture", "quality", "ais", "options", "devices", "distributed"},
    {"data", "nets", "plots", "zoo"},  # data, nets: packages, every module inside them
    {"config"},
    {"samplers", "models"},
    {"runs", "evaluate", "features", "tables"},
    {"trainer", "bench", "report", "checks", "cli", "__init__", "__main__"},
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer_of(name: str) -> int:
    top = name.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"genzoo.{name} is in no layer of tests/test_layout.py: add it")


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(every genzoo module imported anywhere in the file, those imported at module level), without 'genzoo.'."""
    everywhere, top_level = set(), set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = set()
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "genzoo":
            if node.module == "genzoo":
                names = {a.name for a in node.names}
            else:
                names = {node.module.removeprefix("genzoo.")}
        elif isinstance(node, ast.Import):
            names = {a.name.removeprefix("genzoo.") for a in node.names if a.name.split(".")[0] == "genzoo"}
        everywhere |= names
        if node in tree.body:
            top_level |= names
    return everywhere, top_level


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for name, path in modules().items():
        for dep in imports_of(path)[0]:
            if layer_of(dep) > layer_of(name):
                wrong.append(f"genzoo.{name} (layer {layer_of(name)}) imports genzoo.{dep} (layer {layer_of(dep)})")
    assert not wrong, "\n".join(wrong)


def test_the_foundations_import_nothing_above_them():
    """The issue's contract in its own words: nets, theory, quality, ais and data stand on errors alone."""
    for name, path in modules().items():
        if name.split(".")[0] in ("nets", "theory", "quality", "ais", "data"):
            outside = {d for d in imports_of(path)[0] if d.split(".")[0] not in (name.split(".")[0], "errors")}
            assert not outside, f"genzoo.{name} imports {sorted(outside)}"


def test_module_level_imports_have_no_cycle():
    graph = {}
    known = modules()
    for name, path in known.items():
        deps = set()
        for dep in imports_of(path)[1]:
            # `from genzoo.x import y` may name a module y of package x, or an object in x
            deps.add(dep if dep in known or f"{dep}.__init__" not in known else f"{dep}.__init__")
        graph[name] = {d for d in deps if d in known and d != name}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_layer_check_can_fail(tmp_path, monkeypatch):
    """The check itself sees an upward import (a network importing the trainer)."""
    fake = tmp_path / "nets" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from genzoo.trainer import Trainer\n")
    everywhere, top = imports_of(fake)
    assert everywhere == {"trainer"} and top == set()
    assert layer_of("trainer") > layer_of("nets.bad")

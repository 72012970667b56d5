"""The package's layers, as the README's Layout lists them: every module belongs to one, imports only from its own
layer and the ones below it, and every listed path exists."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zskt_fast"


def readme_layers() -> list[tuple[str, list[str]]]:
    """(layer, paths) from the README's Layout block, top layer first."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(layer .*?)```", text, re.S)
    assert block, "the README's Layout has no layer block"
    lines = [line.split() for line in block[1].splitlines()[1:] if line.strip()]
    return [(words[0], words[1:]) for words in lines]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, layers) -> int:
    """Index from the bottom of the layer holding `module`; the most specific listed path wins."""
    module = "csrc" if module == "zskt_fast._C" else module  # the compiled library, built from csrc/
    best, best_len = None, -1
    for index, (_, paths) in enumerate(reversed(layers)):
        for path in paths:
            name = path.rstrip("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            covers_submodules = not path.endswith("__init__.py")
            if (module == name or covers_submodules and module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = index, len(name)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer of the README's Layout")
    return best


def imported_modules(path: Path) -> set[str]:
    """Every zskt_fast module `path` imports, anywhere in it (function-local imports too). `from a import b` counts as
    importing the module a.b when there is one, else a."""
    known = {module_name(p) for p in PACKAGE.rglob("*.py")} | {"zskt_fast._C"}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                prefix = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                found.add(f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix)
    return {name for name in found if name in known}


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_readme_layout_lists_existing_paths_and_covers_every_module():
    layers = readme_layers()
    assert [name for name, _ in layers][0] == "root" and len(layers) >= 5
    for name, paths in layers:
        for path in paths:
            assert (ROOT / path).exists(), f"the README's layer {name!r} lists {path}, which does not exist"
    for path in SOURCES:
        layer_of(module_name(path), layers)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    layers = readme_layers()
    names = [name for name, _ in reversed(layers)]
    own = layer_of(module_name(path), layers)
    for imported in imported_modules(path):
        target = layer_of(imported, layers)
        assert target <= own, (f"{module_name(path)} (layer {names[own]}) imports {imported} (layer "
                               f"{names[target]}), a higher layer")


def test_the_walker_resolves_relative_imports():
    """Relative imports (`from . import nn`, `from .checkpoint import x`) are resolved to the modules they name, so an
    upward one cannot hide."""
    assert "zskt_fast.nn" in imported_modules(PACKAGE / "__init__.py")
    assert "zskt_fast.engine.lifecycle.checkpoint" in imported_modules(PACKAGE / "engine" / "trainer.py")
    assert "zskt_fast.common" in imported_modules(PACKAGE / "kernels" / "triton" / "_launch.py")
    layers = readme_layers()
    assert layer_of("zskt_fast.train", layers) > layer_of("zskt_fast.engine.loops.loop", layers)


def test_no_module_imports_itself_back():
    """No import circle among the package's modules (function-local imports included): following imports never
    leads back to the module they start from."""
    graph = {module_name(p): imported_modules(p) - {module_name(p)} for p in SOURCES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + (module,))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, path + (module,))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())

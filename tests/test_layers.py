"""The package layout is the architecture: no import cycles, and no import against the layers.

The graph is read from the source with ``ast``, so it holds every import: at module level,
inside functions (the lazy imports that keep ``limamono --help`` fast) and under
``TYPE_CHECKING``. The layer order is the one in docs/ARCHITECTURE.md ("Layers"); a test
below checks that the page and this list agree.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "limamono"

#: Bottom first. A module may import its own package and any package of a lower layer;
#: packages that share a layer do not import each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "data", "util"}),
    frozenset({"core"}),
    frozenset({"style", "samplers"}),
    frozenset({"cards", "quality"}),
    frozenset({"models"}),
    frozenset({"engine"}),
    frozenset({"dataset", "store", "chat"}),
    frozenset({"train", "evaluate"}),
    frozenset({"server"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)


def module_names(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    names = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The limamono modules one import statement names (``from a import b`` is the module
    ``a.b`` when that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                      for alias in node.names]
    else:
        return
    for name in candidates:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("limamono") and name != module:
            yield name


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the limamono modules it imports, anywhere in its source."""
    files = module_names(src)
    known = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            graph[name].update(_targets(node, name, path.name == "__init__.py", known))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step):], step]
            elif not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return None


def top_package(module: str) -> str:
    """``limamono.engine.loop`` -> ``engine``; the root package itself is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise LookupError(package)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a package of a higher layer, or of another package of the same one."""
    out = []
    for module, targets in sorted(graph.items()):
        here = top_package(module)
        for target in sorted(targets):
            there = top_package(target)
            if there != here and layer_of(there) >= layer_of(here):
                out.append(f"{module} imports {target}: {there!r} is not below {here!r}")
    return out


def test_the_graph_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "limamono"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from . import x\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from limamono.b import y\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a.x import f\n")
    graph = import_graph(pkg)
    assert graph == {"limamono": set(), "limamono.a": {"limamono.a.x"},
                     "limamono.a.x": {"limamono.b"}, "limamono.b": {"limamono.a.x"}}
    assert find_cycle(graph) == ["limamono.a.x", "limamono.b", "limamono.a.x"]
    assert find_cycle({"p": {"q"}, "q": set()}) is None


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_every_package_has_a_layer() -> None:
    packages = {top_package(m) for m in module_names()}
    missing = sorted(p for p in packages if not any(p in layer for layer in LAYERS))
    assert missing == [], f"add these packages to LAYERS and docs/ARCHITECTURE.md: {missing}"


def test_no_import_against_the_layers() -> None:
    assert layer_violations(import_graph()) == []


def test_a_violation_is_named() -> None:
    graph = {"limamono.core.format": {"limamono.engine.loop"},
             "limamono.style.rules": {"limamono.samplers.chain"}}
    assert layer_violations(graph) == [
        "limamono.core.format imports limamono.engine.loop: 'engine' is not below 'core'",
        "limamono.style.rules imports limamono.samplers.chain: 'samplers' is not below "
        "'style'",
    ]


def test_architecture_page_lists_the_same_layers() -> None:
    """docs/ARCHITECTURE.md's layer list, bottom first, names the same packages per layer."""
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = page.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\d+\. (.+)$", section, re.M)
    documented = [frozenset(re.findall(r"`([\w]+)/?`", row)) for row in rows]
    assert documented == [layer - {"__init__", "data"} for layer in LAYERS]


@pytest.mark.parametrize("package", sorted(p.name for p in SRC.iterdir()
                                           if p.is_dir() and (p / "__init__.py").exists()))
def test_architecture_page_describes_every_package(package: str) -> None:
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = page.split("## Packages and modules", 1)[1].split("\n## ", 1)[0]
    assert f"| `{package}/` |" in table

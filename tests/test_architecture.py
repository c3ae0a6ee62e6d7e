"""The architecture as tests: which app may import which, no modules that import each other, and no
module so long it is asking to be split (DESIGN.md, "Dependencies point one way"; issue 14).

The import graph is read from the source with `ast`, never by importing it, so these tests need no
database and no torch. Every import counts, including those inside functions: a lazy import is still
a dependency, it only hides it from import time. Only imports under `if TYPE_CHECKING:` are left out
(they never run), and so are dotted strings (`include("training.urls")`, task paths), which is how
the root URLconf and the queue name modules they must not import."""
from __future__ import annotations

import ast
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The layers, top to bottom. A package may import itself and the packages listed beside it, nothing
# else of the project; third-party imports are not this table's business.
#   training   → generation, api, imagesite   (a run's validation images are generations)
#   generation → api, imagesite
#   api        → imagesite                    (only shared API pieces: tokens, errors, schema,
#                                                webhooks, throttling; each app's views live in the app)
#   imagesite  → (nothing: settings, accounts, jobs, files — the bottom layer)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "training": frozenset({"generation", "api", "imagesite"}),
    "generation": frozenset({"api", "imagesite"}),
    "api": frozenset({"imagesite"}),
    "imagesite": frozenset(),
}

MAX_LINES = 400
# Folders whose modules may be long: tests, benchmarks, migrations and the demo model's recipe.
LENGTH_EXEMPT_DIRS = frozenset({"tests", "bench", "migrations", "demo"})
# Folders that hold no project source.
SKIP_DIRS = frozenset({".venv", "venv", ".git", "build", "media", "staticfiles", "node_modules", "__pycache__"})


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported project module, dotted (the longest name that is a project module)
    path: Path  # file of the importing module
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where()}: {self.source} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    """Every .py file of the project by dotted module name (virtualenv and build output left out)."""
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(folder) / name
                files[_module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST):
    """ast.walk, minus the bodies of `if TYPE_CHECKING:` (their `else:` still runs)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, ast.If) and _is_type_checking(current.test):
            stack.extend(current.orelse)
            continue
        stack.extend(ast.iter_child_nodes(current))


@cache
def module_names() -> frozenset[str]:
    """Every project module and package name, namespace packages (folders without __init__.py) too."""
    names = set()
    for module in project_files():
        parts = module.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(names)


def _project_module(dotted: str) -> str | None:
    """The longest prefix of `dotted` that is a project module, None for third-party names."""
    modules = module_names()
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _resolve_relative(module: str, path: Path, level: int, name: str | None) -> str:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([name] if name else []))


def _imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[tuple[str, int], Import] = {}

    def add(dotted: str, line: int) -> None:
        target = _project_module(dotted)
        if target is not None and target != module:
            found.setdefault((target, line), Import(module, target, path, line))

    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, path, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                # `from pkg import mod` depends on pkg.mod when that is a module, else on pkg.
                add(".".join(part for part in (base, alias.name) if part and part != "*") or base, node.lineno)
    return sorted(found.values(), key=lambda edge: (edge.line, edge.target))


@cache
def import_graph() -> tuple[Import, ...]:
    return tuple(edge for module, path in project_files().items() for edge in _imports_of(module, path))


def _top(module: str) -> str:
    return module.split(".")[0]


def _listing(edges) -> str:
    return "\n  " + "\n  ".join(str(edge) for edge in sorted(edges, key=lambda e: (str(e.path), e.line)))


# --- the graph reader itself ------------------------------------------------------------------------


def test_the_scan_sees_every_app_and_their_imports():
    """Guards the guard: an empty or broken scan would pass every rule below."""
    modules = project_files()
    for package in MAY_IMPORT:
        assert package in modules, f"{package}/__init__.py not found: the scan looks in the wrong place"
    assert "training.models" in modules and "generation.migrations.0001_initial" in modules
    assert not any(".venv" in str(path) for path in modules.values())
    edges = {(edge.source, edge.target) for edge in import_graph()}
    # Known shapes: relative `from . import views`, absolute `from imagesite.jobs import ...`.
    assert ("generation.urls", "generation.views") in edges
    assert ("training.models", "imagesite.jobs") in edges


def test_lazy_imports_count_and_type_checking_ones_do_not(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from training.models import Subject\n"
        "def f():\n"
        "    from training import models, not_a_module\n"
        "    import generation.models as m, django.db\n"
        "    from .. import generation\n"
    )
    path = tmp_path / "probe.py"  # parsed as if it were imagesite/probe.py
    path.write_text(source)
    targets = {(edge.target, edge.line) for edge in _imports_of("imagesite.probe", path)}
    assert targets == {("training.models", 5), ("training", 5), ("generation.models", 6), ("generation", 7)}


# --- (a) layers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", list(MAY_IMPORT))
def test_package_imports_only_the_layers_below_it(package):
    allowed = MAY_IMPORT[package] | {package}
    offenders = [
        edge
        for edge in import_graph()
        if _top(edge.source) == package and _top(edge.target) in MAY_IMPORT and _top(edge.target) not in allowed
    ]
    if offenders:
        pytest.fail(
            f"{package} may import only {', '.join(sorted(MAY_IMPORT[package])) or 'nothing of the project'}; "
            f"{len(offenders)} import(s) point the wrong way:" + _listing(offenders),
            pytrace=False,
        )


# --- (b) cycles ------------------------------------------------------------------------------------


def test_no_two_modules_import_each_other():
    by_pair: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for edge in import_graph():
        by_pair[(edge.source, edge.target)].append(edge)
    cycles = sorted({tuple(sorted(pair)) for pair in by_pair if (pair[1], pair[0]) in by_pair})
    report = []
    for a, b in cycles:
        report.append(f"{a} <-> {b}")
        report += [f"    {edge}" for edge in by_pair[(a, b)] + by_pair[(b, a)]]
    if cycles:
        pytest.fail(f"{len(cycles)} pair(s) of modules import each other:\n  " + "\n  ".join(report), pytrace=False)


def _package_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_no_cycles_between_top_level_packages():
    edges: dict[str, set[str]] = defaultdict(set)
    witnesses: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for edge in import_graph():
        a, b = _top(edge.source), _top(edge.target)
        if a != b:
            edges[a].add(b)
            witnesses[(a, b)].append(edge)
    components = _package_cycles(edges)
    report = []
    for component in components:
        report.append(" <-> ".join(component))
        for a in component:
            for b in component:
                if found := witnesses.get((a, b)):
                    upward = a in MAY_IMPORT and b in MAY_IMPORT and b not in MAY_IMPORT[a]
                    report.append(
                        f"    {a} -> {b} ({len(found)}{', against the layers' if upward else ''}): "
                        + ", ".join(edge.where() for edge in found)
                    )
    if components:
        pytest.fail("packages that depend on each other in a loop:\n  " + "\n  ".join(report), pytrace=False)


# --- (c) module length -----------------------------------------------------------------------------


def test_no_module_is_over_the_length_limit():
    offenders = []
    for module, path in project_files().items():
        if LENGTH_EXEMPT_DIRS & set(path.relative_to(ROOT).parts[:-1]):
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            offenders.append(f"{path.relative_to(ROOT)}: {lines} lines")
    if offenders:
        pytest.fail(
            f"modules over {MAX_LINES} lines (split them by meaning, STYLE.md habit 1):\n  " + "\n  ".join(sorted(offenders)),
            pytrace=False,
        )

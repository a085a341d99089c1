"""The pytest plugins in fixtures/plugins/ import each other without a cycle, each on its own.

A cycle hidden in a function-level import still bites: whichever plugin pytest loads
first decides whether the other one is half-initialised. So the graph counts every
import statement, at module level or inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "fixtures" / "plugins"
PACKAGE = "fixtures.plugins"
MODULES = sorted(p.stem for p in PLUGINS.glob("*.py") if p.stem != "__init__")


def plugin_imports(source: str, known: Iterable[str] = MODULES) -> set[str]:
    """The sibling plugin modules (of `known`) one plugin's source imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif node.level == 1:  # from . import x / from .x import y, inside the package
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                continue  # from .. : outside fixtures/plugins
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1 :].split(".")[0])
    return found & set(known)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle reachable in the graph, each once, as a path a -> ... -> a."""
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt) :] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            else:
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


def test_the_cycle_finder_reports_a_cycle_hidden_in_a_function():
    sources = {
        "a": "from fixtures.plugins.b import x\n",
        "b": "def f():\n    from fixtures.plugins import a\n",
        "c": "from . import a\nimport fixtures.plugins.b as bee\n",
    }
    graph = {name: plugin_imports(src, known=sources) for name, src in sources.items()}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a", "b"}}
    assert import_cycles(graph) == [["a", "b", "a"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_plugin_imports_sees_every_import_form():
    source = (
        "from fixtures.plugins.cluster import state_key\n"
        "import fixtures.plugins.kube\n"
        "def f():\n    from fixtures.plugins import ranges\n"
        "def g():\n    from .diagnostics import touched\n"
        "from fixtures.lifecycle import SessionCluster\n"
    )
    assert plugin_imports(source) == {"cluster", "kube", "ranges", "diagnostics"}


def test_the_plugins_import_each_other_without_a_cycle():
    graph = {m: plugin_imports((PLUGINS / f"{m}.py").read_text()) - {m} for m in MODULES}
    assert import_cycles(graph) == [], f"import graph of fixtures/plugins: {graph}"


def test_each_plugin_imports_on_its_own_in_a_fresh_interpreter():
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {PACKAGE}.{m}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in MODULES
    }
    failed = {}
    for module, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failed[module] = out.strip().splitlines()[-1:]
    assert failed == {}


# loaded through pyproject.toml's pytest11 entry points, not fixtures/plugins/__init__.py
ENTRY_POINTS = {"kind_options": "cni-e2e-kind-options"}
# loaded only when asked for with -p (scripts/bench-session), never by default
OPT_IN = {"session_timing"}


@pytest.mark.parametrize("module", [m for m in MODULES if m not in {*ENTRY_POINTS, *OPT_IN}])
def test_every_plugin_module_is_listed_in_the_package(module):
    """A module left out of fixtures/plugins/__init__.py would silently never load."""
    init = ast.parse((PLUGINS / "__init__.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in init.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "pytest_plugins"
    )
    assert f"{PACKAGE}.{module}" in listed


@pytest.mark.parametrize("module", sorted(OPT_IN))
def test_opt_in_plugin_modules_are_not_loaded_by_default(module):
    """An opt-in plugin listed in the package would run in every session."""
    init = ast.parse((PLUGINS / "__init__.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in init.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "pytest_plugins"
    )
    assert f"{PACKAGE}.{module}" not in listed


@pytest.mark.parametrize(("module", "name"), sorted(ENTRY_POINTS.items()))
def test_entry_point_plugins_are_declared_and_installed(module, name):
    import tomllib
    from importlib.metadata import entry_points

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["pytest11"][name] == f"{PACKAGE}.{module}"
    installed = {e.name: e.value for e in entry_points(group="pytest11")}
    assert installed.get(name) == f"{PACKAGE}.{module}", "reinstall: pip install -e ."

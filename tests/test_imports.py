"""The package's import graph (every import, at module level or inside a function): no
cycles, and the table and store-layout modules import no stage.

``python -m tests.test_imports`` prints the graph of ``rmeval`` and any cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rmeval"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> the rmeval modules it imports`` (``import a.b``, ``from a import b``,
    ``from . import b``; the package ``rmeval`` itself, i.e. ``__version__``, left out)."""
    paths = {module_name(p): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in paths and m not in (name, "rmeval")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None."""
    state: dict[str, str] = {}  # "active" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "active"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "active":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "rmeval.report" in graph["rmeval.pipeline"]  # the walk sees lazy imports too
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_table_and_store_import_no_stage():
    graph = import_graph()
    infrastructure = {"rmeval.storage", "rmeval.errors", "rmeval.procutil"}
    scoring = {"rmeval.rewardbench", "rmeval.rewardbench.scoring", "rmeval.rewardbench.scoring_v2"}
    # ^ the weights and the RewardBench 2 rules, no stage
    assert graph["rmeval.table"] <= infrastructure | scoring
    assert graph["rmeval.store"] <= infrastructure
    # ... and the stages reach the store's layout through it, not through run-one
    for stage in ("rmeval.plan", "rmeval.collect"):
        assert "rmeval.store" in graph[stage] and "rmeval.run" not in graph[stage], stage


if __name__ == "__main__":
    g = import_graph()
    for mod in sorted(g):
        print(f"{mod} -> {', '.join(sorted(g[mod])) or '(nothing)'}")
    c = find_cycle(g)
    print("cycle: " + " -> ".join(c) if c else "no import cycle")
    sys.exit(1 if c else 0)

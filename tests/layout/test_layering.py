"""Imports run one way, between the packages and between the rooms inside them, and no two
modules import each other, counting imports inside functions too (they are still a dependency,
only deferred):

    jobs -> alexnet.demo | alexnet.sweep -> alexnet.run -> alexnet.train -> alexnet.track -> alexnet.serve
         -> alexnet (config, lr_schedule, models) -> pipelines.ingest | pipelines.read -> pipelines
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "alexnet", "jobs")
# Rooms from the bottom up; a module is in the longest room its name starts with. A room may
# import its own modules and any room below it, never one above it or one beside it.
ROOMS = (("pipelines",), ("pipelines.ingest", "pipelines.read"), ("alexnet",), ("alexnet.serve",),
         ("alexnet.track",), ("alexnet.train",), ("alexnet.run",), ("alexnet.demo", "alexnet.sweep"), ("jobs",))
LEVEL = {room: level for level, rooms in enumerate(ROOMS) for room in rooms}


def _room(module: str) -> str:
    return max((r for r in LEVEL if module == r or module.startswith(r + ".")), key=len)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` names a module when mod is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def test_imports_run_one_way_between_the_rooms():
    wrong = [(m, d) for m, deps in _graph().items() for d in deps
             if _room(d) != _room(m) and LEVEL[_room(d)] >= LEVEL[_room(m)]]
    assert wrong == []


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    pairs = sorted({tuple(sorted((m, d))) for m, deps in graph.items() for d in deps if m in graph.get(d, ())})
    assert pairs == []

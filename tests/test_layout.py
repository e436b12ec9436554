"""The architecture as the imports show it (docs/architecture.md, "who may import whom"):

- the gateway side (``service``, ``schemas``, ``common``) never imports torch, torchvision, the worker
  package or the CLI, neither at run time nor anywhere in its source;
- nothing on the serving path (the worker process, the explainer and metric libraries, the models)
  imports the training and data-generation code;
- no two project modules import each other, directly or through others (function-local imports count).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("schemas", "common", "service", "workers", "cli")
GATEWAY_PACKAGES = ("service", "schemas", "common")
GATEWAY_FORBIDDEN = ("torch", "torchvision", "workers", "cli")
SERVING = ("workers.serving", "workers.explain", "workers.evaluation", "workers.models")
# the metric report is an offline command (`whitebox report`) that draws generated data sets
OFFLINE = ("workers.evaluation.report",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(f): f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every absolute import of a file, at any depth (``from a.b import c`` gives a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in imported_names(path):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                cycles.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60 and sum(map(len, graph.values())) > 100
    assert find_cycles(graph) == []


def test_no_gateway_source_imports_the_worker_side():
    mods = project_modules()
    gateway = {n: p for n, p in mods.items() if n.split(".")[0] in GATEWAY_PACKAGES}
    assert len(gateway) > 10
    bad = {n: sorted({i.split(".")[0] for i in imported_names(p)} & set(GATEWAY_FORBIDDEN)) for n, p in gateway.items()}
    assert not {n: v for n, v in bad.items() if v}


def test_serving_path_never_imports_training_code():
    graph = import_graph()
    serving = [n for n in graph if n.startswith(SERVING) and n not in OFFLINE]
    assert "workers.serving.worker" in serving and "workers.explain.generators" in serving
    seen, todo = set(), list(serving)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    assert not sorted(n for n in seen if n.startswith("workers.training"))


def test_gateway_does_not_import_torch_at_run_time():
    code = (
        "import sys, service.app, service.server, schemas.api, schemas.metrics, schemas.queue; "
        "service.app.create_app(__import__('schemas.settings').settings.Settings(redis_url='redis://127.0.0.1:1/0')); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'workers', 'cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

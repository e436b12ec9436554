"""The gateway stays small: it never imports torch, torchvision or the worker package, neither at
run time nor anywhere in its source (docs/architecture.md: who may import whom)."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

GATEWAY_PACKAGES = ("service", "schemas", "common")
FORBIDDEN = ("torch", "torchvision", "workers", "cli")


def imported_roots(path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_gateway_does_not_import_torch_at_run_time():
    code = (
        "import sys, service.app, service.server, schemas.api, schemas.metrics; "
        "service.app.create_app(__import__('schemas.settings').settings.Settings(redis_url='redis://127.0.0.1:1/0')); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'workers', 'cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_gateway_source_imports_the_worker_side():
    files = [f for pkg in GATEWAY_PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 10
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & set(FORBIDDEN)) for f in files}
    assert not {k: v for k, v in bad.items() if v}

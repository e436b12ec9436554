"""The gateway never imports torch (DESIGN.md §1): it must start fast and small."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_gateway_does_not_import_torch():
    code = (
        "import sys, service.app, service.cli, schemas.api, schemas.metrics; "
        "service.app.create_app(__import__('schemas.settings').settings.Settings(redis_url='redis://127.0.0.1:1/0')); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'workers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

"""The worker side reads its configuration from ``schemas.settings.Settings`` alone: a bad variable
stops ``python -m workers`` (and the CLI) with one line naming it, and no source file of ``workers/``
or ``cli/`` reads the environment itself."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WHITEBOX_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, *args], env={**full, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args", [["-m", "workers"], ["-m", "cli.main", "worker"], ["-m", "cli.main", "models"]], ids=" ".join
)
def test_a_bad_variable_is_one_line_naming_it(args):
    p = _run(args, WHITEBOX_MAX_BATCH_SIZE="abc", REDIS_URL="redis://127.0.0.1:1/0")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert "WHITEBOX_MAX_BATCH_SIZE" in lines[0] and "'abc'" in lines[0]


def test_worker_models_come_from_the_settings():
    """WHITEBOX_WORKER_MODELS names a model the registry lacks: the worker says so at start-up
    (it read the variable through the settings), in one line."""
    p = _run(["-m", "workers"], WHITEBOX_WORKER_MODELS="no-such-model", REDIS_URL="redis://127.0.0.1:1/0")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "'no-such-model' is not in the registry" in p.stderr


def _environment_reads(path) -> list[str]:
    """``os.environ`` / ``os.getenv`` uses of a file, except the copy ``dict(os.environ)`` (an
    environment handed to child processes)."""
    tree = ast.parse(path.read_text(), str(path))
    copies = {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and node.args
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv", "environb")
            and id(node) not in copies
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_worker_or_cli_source_reads_the_environment():
    files = [f for pkg in ("workers", "cli") for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20
    assert [hit for f in files for hit in _environment_reads(f)] == []

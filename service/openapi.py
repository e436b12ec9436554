"""The committed OpenAPI document, ``docs/openapi.json`` (pretty, sorted keys): ``python -m service.openapi
--write`` writes it from the live app, ``--check`` fails when it differs (docs/architecture.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from service.app import create_app

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def live_spec() -> dict[str, Any]:
    """The app's document; no Redis is needed (nothing connects before the app starts)."""
    return create_app(Settings(redis_url="redis://127.0.0.1:6379/0")).openapi()


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.openapi", description=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"write {SPEC_PATH.name} from the live app")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {SPEC_PATH.name} differs from the app")
    args = ap.parse_args(argv)
    text = render(live_spec())
    if args.write:
        SPEC_PATH.write_text(text)
        print(f"wrote {SPEC_PATH}")
        return 0
    if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
        print(f"{SPEC_PATH} is stale: run python -m service.openapi --write", file=sys.stderr)
        return 1
    print(f"{SPEC_PATH} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

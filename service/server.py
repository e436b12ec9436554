"""Run the gateway under uvicorn (``python -m service``, ``whitebox gateway``)."""

from __future__ import annotations

import os

from schemas.settings import Settings


def run(host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    s = Settings.from_env()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        log_level=os.environ.get("WHITEBOX_LOG_LEVEL", "info").lower(),
        access_log=False,
    )

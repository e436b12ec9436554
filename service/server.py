"""Run the gateway under uvicorn (``python -m service``, ``whitebox gateway``)."""

from __future__ import annotations

import uvicorn

from schemas.settings import Settings


def run(host: str | None = None, port: int | None = None) -> None:
    s = Settings.from_env()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        log_level=s.log_level.lower(),
        access_log=False,
    )

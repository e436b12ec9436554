"""Run the gateway under uvicorn (``python -m service``, ``whitebox gateway``): the h11 protocol with a
header read timeout (``service.slow_clients``), at most ``max_connections`` connections (uvicorn answers
503 beyond), and no ``Server`` header (docs/robustness.md)."""

from __future__ import annotations

import uvicorn

from schemas.settings import Settings
from service.slow_clients import header_timeout_protocol


def run(host: str | None = None, port: int | None = None) -> None:
    s = Settings.from_env()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        log_level=s.log_level.lower(),
        access_log=False,
        http=header_timeout_protocol(s.header_timeout_s),
        limit_concurrency=s.max_connections,
        server_header=False,
    )

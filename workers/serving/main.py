"""``python -m workers``: one worker process, configured by ``schemas.settings.Settings`` alone."""

from __future__ import annotations

import logging
import signal

from prometheus_client import start_http_server

from schemas.settings import Settings
from workers.serving.worker import Worker


def main() -> None:
    settings = Settings.from_env()  # a bad variable: one line naming it, exit code 1
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    w = Worker(settings)
    signal.signal(signal.SIGTERM, w.stop)
    signal.signal(signal.SIGINT, w.stop)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    w.run()

"""What the routes share, built once per app: settings, the model registry and its labels, the queue
client and the Prometheus registry (docs/architecture.md). Routes reach it through ``service.deps``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from common.telemetry import GatewayMetrics
from schemas.registry import Registry, load_registry
from schemas.settings import Settings
from service.queue_client import QueueClient


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry: Registry = load_registry(settings.models_path)
        self.labels = {m.name: self.registry.labels_of(m) for m in self.registry.models}
        self.prom = CollectorRegistry()
        self.metrics = GatewayMetrics(self.prom)
        self.queue = QueueClient(settings, self.metrics)

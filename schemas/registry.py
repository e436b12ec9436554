"""Model-registry configuration: one YAML file names the models a worker loads (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: tuple[int, int] = Field(..., description="(height, width) of the model's input")
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError("mean and std must both have 1 or 3 entries")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self

    @property
    def channels(self) -> int:
        return len(self.mean)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    architecture: str
    weights: str | None = None
    num_classes: int = Field(..., ge=1)
    labels: list[str] | None = None
    labels_file: str | None = None
    input: InputSpec
    target_layer: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _labels(self) -> ModelEntry:
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        return self


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelEntry]
    base_dir: Path | None = Field(None, exclude=True)

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p

    def labels_of(self, entry: ModelEntry) -> list[str]:
        if entry.labels is not None:
            return list(entry.labels)
        if entry.labels_file:
            lines = [ln.strip() for ln in self.resolve(entry.labels_file).read_text().splitlines() if ln.strip()]
            if len(lines) != entry.num_classes:
                raise ValueError(f"{entry.labels_file}: {len(lines)} labels for {entry.num_classes} classes")
            return lines
        return [str(i) for i in range(entry.num_classes)]


DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "workers" / "models" / "registry" / "default.yaml"


def load_registry(path: str | Path | None = None) -> Registry:
    p = Path(path) if path else DEFAULT_REGISTRY
    data = yaml.safe_load(p.read_text())
    reg = Registry.model_validate(data)
    reg.base_dir = p.parent
    return reg

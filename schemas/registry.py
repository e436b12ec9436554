"""Model-registry configuration: one YAML file names the models a worker loads (docs/architecture.md).

What a registry may name is bounded when it is loaded: each architecture starts with one of the allowed
module prefixes (``registry_architectures``), and each weights or labels file lies in the registry's folder
or the committed weights folder (``workers/models/weights``) unless ``registry_any_path`` is set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.settings import Settings

MODELS_DIR = Path(__file__).resolve().parent.parent / "workers" / "models"
DEFAULT_REGISTRY = MODELS_DIR / "registry" / "default.yaml"
WEIGHTS_DIR = MODELS_DIR / "weights"  # the committed weights: allowed to every registry


MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a model's name: also the gateway's path segment


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
    name: str = Field(..., pattern=f"^{MODEL_NAME}$")
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
    any_path: bool = Field(False, exclude=True)

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def resolve(self, path: str) -> Path:
        """A weights or labels file of the registry; ValueError when it lies outside the allowed folders."""
        p = Path(path)
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        if self.any_path:
            return p
        real = p.resolve()
        roots = [r.resolve() for r in (self.base_dir, WEIGHTS_DIR) if r is not None]
        if not any(real.is_relative_to(r) for r in roots):
            raise ValueError(
                f"{path!r} lies outside the registry's folder and {WEIGHTS_DIR.name}/ (set registry_any_path to allow)"
            )
        return p

    def check(self, architectures: Sequence[str]) -> None:
        """Refuse an entry whose architecture has no allowed prefix or whose files lie outside the folders."""
        for m in self.models:
            if not any(m.architecture.startswith(prefix) for prefix in architectures):
                raise ValueError(
                    f"model {m.name!r}: architecture {m.architecture!r} is not under an allowed module prefix "
                    f"({', '.join(architectures) or 'none'}; setting registry_architectures)"
                )
            for field, path in (("weights", m.weights), ("labels_file", m.labels_file)):
                if path is not None:
                    try:
                        self.resolve(path)
                    except ValueError as e:
                        raise ValueError(f"model {m.name!r}: {field} {e}") from None

    def labels_of(self, entry: ModelEntry) -> list[str]:
        if entry.labels is not None:
            return list(entry.labels)
        if entry.labels_file:
            lines = [ln.strip() for ln in self.resolve(entry.labels_file).read_text().splitlines() if ln.strip()]
            if len(lines) != entry.num_classes:
                raise ValueError(f"{entry.labels_file}: {len(lines)} labels for {entry.num_classes} classes")
            return lines
        return [str(i) for i in range(entry.num_classes)]


def load_registry(path: str | Path | None = None, settings: Settings | None = None) -> Registry:
    """The registry at ``path`` (the default one when None), checked against the allow-list and folder
    rules of ``settings`` (this process' settings when None); a one-line SystemExit naming the entry otherwise."""
    s = settings or Settings.from_env()
    p = Path(path) if path else DEFAULT_REGISTRY
    data = yaml.safe_load(p.read_text())
    reg = Registry.model_validate(data)
    reg.base_dir = p.parent
    reg.any_path = s.registry_any_path
    try:
        reg.check(s.registry_architectures)
    except ValueError as e:
        raise SystemExit(f"whitebox: registry {p}: {e}") from None
    return reg

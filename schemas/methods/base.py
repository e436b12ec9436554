"""Catalog entry type and the parameter base class shared by all methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["linearization", "structure", "adversarial", "black_box"]
Reduce = Literal["max_abs", "sum", "abs_sum", "mean", "none", "single"]


class Params(BaseModel):
    """Base of every method's parameters: unknown keys are an error, floats must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class SmoothGradModifier(BaseModel):
    """SmoothGrad (§4.5, Eq. 8) applied on top of any gradient method:
    average the method's map over ``samples`` noisy copies of the input."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    samples: int = Field(25, ge=1, le=1000)
    noise_level: float = Field(0.15, ge=0.0, le=10.0, description="sigma / (x_max - x_min) on the normalised input")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="seed of the noise draws; fixed seed gives the same map"
    )


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: Family
    paper: str
    params: type[Params]
    default_reduce: Reduce
    summary: str
    stochastic: bool = False
    gradient_based: bool = False  # accepts the `smoothgrad` modifier
    uses_layer: bool = False
    signed: bool = True  # the raw map can be negative (False: ReLU'd, a mask, an absolute difference)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "summary": self.summary,
            "default_reduce": self.default_reduce,
            "stochastic": self.stochastic,
            "accepts_smoothgrad_modifier": self.gradient_based,
            "uses_layer": self.uses_layer,
            "signed": self.signed,
            "notes": list(self.notes),
            "params_schema": self.params.model_json_schema(),
        }


CATALOG: dict[str, MethodSpec] = {}


def method(**kwargs: Any) -> MethodSpec:
    spec = MethodSpec(**kwargs)
    if spec.name in CATALOG:
        raise ValueError(f"method {spec.name!r} declared twice")
    CATALOG[spec.name] = spec
    return spec

"""HTTP request and response bodies of the v1 API (DESIGN.md §3)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.methods import CATALOG

Output = Literal["heatmap_png", "overlay_png", "array", "mask_png"]
Normalize = Literal["minmax", "abs_max", "none"]
ReduceChoice = Literal["max_abs", "sum", "abs_sum", "mean", "none"]
Colormap = Literal["jet", "gray", "hot", "viridis"]


class MethodCall(BaseModel):
    """One requested method: its public name and validated parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "MethodCall":
        spec = CATALOG.get(self.name)
        if spec is None:
            raise ValueError(f"unknown method {self.name!r}; known: {', '.join(sorted(CATALOG))}")
        # validation errors of the params model propagate with their field paths
        self.params = spec.params.model_validate(self.params).model_dump(exclude_none=True)
        return self


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=128)
    image: str = Field(..., min_length=1, description="base64 PNG or JPEG")
    target: int | str = Field("predicted", description="class index, class label, or 'predicted'")
    methods: list[MethodCall] = Field(..., min_length=1, max_length=8)
    outputs: list[Output] = Field(default_factory=lambda: ["heatmap_png"], min_length=1)
    colormap: Colormap = "jet"
    normalize: Normalize = "minmax"
    reduce: ReduceChoice | None = Field(None, description="C x H x W -> H x W; default per method")
    top_k: int = Field(5, ge=1, le=100)

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_calls(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("class index must be >= 0")
        return v


class ClassScore(BaseModel):
    class_index: int
    label: str
    score: float


class Prediction(BaseModel):
    class_index: int
    label: str
    score: float
    top_k: list[ClassScore]


class TargetOut(BaseModel):
    class_index: int
    label: str


class ArrayOut(BaseModel):
    shape: list[int]
    dtype: Literal["float32"] = "float32"
    data: str = Field(..., description="base64 of little-endian float32, C order")


class Explanation(BaseModel):
    method: str
    params: dict[str, Any]
    heatmap_png: str | None = None
    overlay_png: str | None = None
    mask_png: str | None = None
    array: ArrayOut | None = None
    raw_range: list[float]
    compute_ms: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class Timings(BaseModel):
    queue_ms: float
    compute_ms: float
    total_ms: float


class ExplainResponse(BaseModel):
    id: str
    model: str
    prediction: Prediction
    target: TargetOut
    explanations: list[Explanation]
    timings: Timings


JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class JobAccepted(BaseModel):
    id: str
    status: JobStatus = "queued"


class JobState(BaseModel):
    id: str
    status: JobStatus
    progress: float = 0.0
    result: ExplainResponse | None = None
    error: dict[str, Any] | None = None

"""HTTP request and response bodies of the v1 API (DESIGN.md §3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from schemas.methods import CATALOG, Params
from schemas.problems import ProblemDetails
from schemas.status import JobStatus

Output = Literal["heatmap_png", "overlay_png", "array", "mask_png"]
Normalize = Literal["minmax", "abs_max", "none"]
ReduceChoice = Literal["max_abs", "sum", "abs_sum", "mean", "none"]
Colormap = Literal["jet", "gray", "hot", "viridis"]


class MethodCall(BaseModel):
    """One requested method: its public name and parameters, validated against the method's params
    model; ``params`` is their dump (defaults left out), ``parsed`` the validated model itself."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="a method of GET /v1/methods")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's params_schema")
    _parsed: Params | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> MethodCall:
        spec = CATALOG.get(self.name)
        if spec is None:
            raise ValueError(f"unknown method {self.name!r}; known: {', '.join(sorted(CATALOG))}")
        # validation errors of the params model propagate with their field paths
        self._parsed = spec.params.model_validate(self.params)
        self.params = self._parsed.model_dump(exclude_none=True)
        return self

    @property
    def parsed(self) -> Params:
        assert self._parsed is not None
        return self._parsed


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
    """Where the time of one job went. The worker fills queue and compute; the gateway adds total."""

    queue_ms: float = Field(..., description="from enqueue until a worker took the job")
    compute_ms: float = Field(..., description="this job's share of the batch: preprocessing, forward, its maps")
    batch_ms: float | None = Field(None, description="wall time of the whole batch the job ran in (explain jobs)")
    batch_size: int | None = Field(None, description="jobs executed together with this one (explain jobs)")
    total_ms: float | None = Field(None, description="from the request's arrival (or the job's creation) to its answer")


class ExplainResponse(BaseModel):
    id: str
    model: str
    prediction: Prediction
    target: TargetOut
    explanations: list[Explanation]
    timings: Timings


class JobAccepted(BaseModel):
    id: str
    status: JobStatus = JobStatus.queued


class JobState(BaseModel):
    """GET /v1/jobs/{id}: status and progress; the result (or the problem) once finished."""

    id: str
    status: JobStatus
    progress: float = Field(0.0, ge=0.0, le=1.0)
    model: str | None = None
    result: ExplainResponse | None = None
    error: ProblemDetails | None = None


# ---- evaluation (§7) -------------------------------------------------------------------


class EvaluateRequest(BaseModel):
    """§7 metrics of one or more methods on one or more images of a model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=128)
    images: list[str] = Field(..., min_length=1, max_length=16, description="base64 PNG or JPEG images")
    target: int | str = "predicted"
    methods: list[MethodCall] = Field(..., min_length=1, max_length=8)
    metrics: list[MetricCall] = Field(
        default_factory=lambda: [MetricCall(name=n) for n in DEFAULT_EVALUATE_METRICS], min_length=1, max_length=32
    )
    ground_truth: GroundTruth | list[GroundTruth] | None = Field(
        None, description="object location in the client's image pixels: one for all images or one per image"
    )
    per_sample: bool = False

    _names = field_validator("methods", mode="before")(ExplainRequest._names_to_calls.__func__)

    @model_validator(mode="after")
    def _check(self) -> EvaluateRequest:
        if isinstance(self.ground_truth, list) and len(self.ground_truth) != len(self.images):
            raise ValueError(f"{len(self.ground_truth)} ground truths for {len(self.images)} images")
        problems = check_metrics(self.metrics, self.ground_truth is not None)
        if problems:
            raise ValueError("; ".join(problems))
        if isinstance(self.target, int) and self.target < 0:
            raise ValueError("class index must be >= 0")
        return self


class MapIn(BaseModel):
    """A map to compare: a float32 array as the explain response gives it, or a grey-level PNG."""

    model_config = ConfigDict(extra="forbid")
    array: ArrayOut | None = None
    mask_png: str | None = None

    @model_validator(mode="after")
    def _one(self) -> MapIn:
        if (self.array is None) == (self.mask_png is None):
            raise ValueError("give exactly one of array, mask_png")
        if self.array is not None:
            shape = self.array.shape
            if len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] > 4096 * 4096:
                raise ValueError("array must be 2-D (H, W) with at most 4096 x 4096 values")
        return self


class CompareRequest(BaseModel):
    """Map-vs-map metrics: two maps, or two methods on one image of a model (map_b / the second method
    is the reference)."""

    model_config = ConfigDict(extra="forbid")

    map_a: MapIn | None = None
    map_b: MapIn | None = None
    model: str | None = Field(None, min_length=1, max_length=128)
    image: str | None = None
    target: int | str = "predicted"
    methods: list[MethodCall] | None = None
    metrics: list[MetricCall] | None = None

    _names = field_validator("methods", mode="before")(ExplainRequest._names_to_calls.__func__)

    @model_validator(mode="after")
    def _check(self) -> CompareRequest:
        maps = self.map_a is not None or self.map_b is not None
        if maps:
            if self.map_a is None or self.map_b is None or self.image is not None or self.methods is not None:
                raise ValueError("give map_a and map_b, or model, image and two methods")
        else:
            if not (self.model and self.image and self.methods and len(self.methods) == 2):
                raise ValueError("give map_a and map_b, or model, image and exactly two methods")
        problems = check_metrics(self.metrics or [], False, for_compare=True)
        if problems:
            raise ValueError("; ".join(problems))
        return self


from schemas.metrics import DEFAULT_EVALUATE_METRICS, GroundTruth, MetricCall, check_metrics  # noqa: E402

EvaluateRequest.model_rebuild()
CompareRequest.model_rebuild()


class EvaluateTimings(BaseModel):
    queue_ms: float | None = None
    compute_ms: float
    total_ms: float | None = None


class EvaluateResponse(BaseModel):
    """{method: {metric: value}}: the mean over the images (or per image with ``per_sample``); a
    multi-output metric gives {output: value}; a metric undefined on every image gives null."""

    id: str
    model: str
    images: int
    results: dict[str, dict[str, Any]]
    timings: EvaluateTimings


class CompareResponse(BaseModel):
    id: str
    model: str | None = None
    methods: list[str] | None = None
    metrics: dict[str, float | None]
    timings: EvaluateTimings

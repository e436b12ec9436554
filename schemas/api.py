"""HTTP request and response bodies of the API: every route of ``service/routes`` declares its
models from here, and ``docs/openapi.json`` is generated from them (docs/architecture.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, field_validator, model_validator

from schemas.display import check_colormap
from schemas.methods import CATALOG, Params
from schemas.problems import ProblemDetails
from schemas.status import JobStatus

Output = Literal["heatmap_png", "overlay_png", "array", "mask_png"]
Normalize = Literal["minmax", "abs_max", "none"]
ReduceChoice = Literal["max_abs", "sum", "abs_sum", "mean", "none"]

Colormap = str  # any matplotlib colour map name (schemas.display.check_colormap)


def names_to_calls(v: Any) -> Any:
    """A method list may name methods by their bare names: ``"fem"`` is ``{"name": "fem"}``."""
    if isinstance(v, list):
        return [{"name": m} if isinstance(m, str) else m for m in v]
    return v


def is_index(text: str) -> bool:
    """``text`` is a class index written in ASCII digits (``str.isdigit`` also takes '²', which ``int``
    refuses)."""
    return text.isascii() and text.isdigit()


IMAGE_DESCRIPTION = (
    "base64 image file: PNG, JPEG, TIFF, GIF, BMP, WEBP or DICOM; 8/16/32-bit grey, grey+alpha, RGB(A), palette or CMYK"
)
COLORMAP_DESCRIPTION = "a matplotlib colour map name; default: bwr for signed maps, jet for unsigned ones"
NORMALIZE_DESCRIPTION = "default: abs_max for signed maps (zero stays zero), minmax for unsigned ones"
WINDOW_DESCRIPTION = (
    "grey-level window (centre and width, both or neither) for high-bit-depth grey and DICOM, in the stored "
    "values after the modality LUT; default: the file's own window, else the full range"
)
FRAME_DESCRIPTION = "frame of a multi-frame DICOM or an animated image (required for those, refused otherwise)"


def _default_outputs() -> list[Output]:
    return ["heatmap_png"]


METHOD_NAMES: list[JsonValue] = [*sorted(CATALOG)]


class MethodCall(BaseModel):
    """One requested method: its public name and parameters, validated against the method's params
    model; ``params`` is their dump (defaults left out), ``parsed`` the validated model itself."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="a method of GET /v1/methods", json_schema_extra={"enum": METHOD_NAMES})
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
    image: str = Field(..., min_length=1, description=IMAGE_DESCRIPTION)
    target: int | str = Field("predicted", description="class index, class label, or 'predicted'")
    methods: list[MethodCall] = Field(..., min_length=1, max_length=8)
    outputs: list[Output] = Field(default_factory=_default_outputs, min_length=1)
    colormap: Colormap | None = Field(None, description=COLORMAP_DESCRIPTION)
    normalize: Normalize | None = Field(None, description=NORMALIZE_DESCRIPTION)
    reduce: ReduceChoice | None = Field(None, description="C x H x W -> H x W; default per method")
    top_k: int = Field(5, ge=1, le=100)
    colorbar: bool = Field(False, description="heatmap_png and overlay_png get a colour bar with the raw value range")
    opacity: float = Field(0.5, ge=0.0, le=1.0, description="weight of the heatmap in overlay_png")
    threshold: float | None = Field(
        None, gt=0.0, le=100.0, description="keep the top p % of relevance (by |value|) in the pictures"
    )
    contour: bool = Field(False, description="overlay_png: draw the outline of the kept region (with threshold)")
    window_center: float | None = Field(None, allow_inf_nan=False, description=WINDOW_DESCRIPTION)
    window_width: float | None = Field(None, ge=1.0, allow_inf_nan=False, description=WINDOW_DESCRIPTION)
    frame: int | None = Field(None, ge=0, le=65535, description=FRAME_DESCRIPTION)

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_calls(cls, v: Any) -> Any:
        return names_to_calls(v)

    @field_validator("target")
    @classmethod
    def _target(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("class index must be >= 0")
        return v

    @field_validator("colormap")
    @classmethod
    def _colormap(cls, v: str | None) -> str | None:
        return None if v is None else check_colormap(v)

    @model_validator(mode="after")
    def _consistent(self) -> ExplainRequest:
        if (self.window_center is None) != (self.window_width is None):
            raise ValueError("give both window_center and window_width, or neither")
        if self.contour and (self.threshold is None or "overlay_png" not in self.outputs):
            raise ValueError(
                "contour outlines the region a threshold keeps on overlay_png: give threshold and ask for overlay_png"
            )
        if self.colorbar and not {"heatmap_png", "overlay_png"} & set(self.outputs):
            raise ValueError("colorbar is drawn beside heatmap_png or overlay_png: ask for one of them")
        return self

    def window(self) -> tuple[float, float] | None:
        """(centre, width) of the grey-level window the request names (None: the file's own, else the
        full range); ``common.window.Window`` applies it."""
        if self.window_center is None or self.window_width is None:
            return None
        return self.window_center, self.window_width


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
    signed: bool = Field(..., description="the map can be negative (its method and reduce keep the sign)")
    normalize: Normalize = Field(..., description="the normalisation applied to the pictures and the array")
    colormap: Colormap = Field(..., description="the colour map of heatmap_png and overlay_png")
    compute_ms: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class Timings(BaseModel):
    """Where the time of one job went. The worker fills queue and compute; the gateway adds total."""

    queue_ms: float = Field(..., description="from enqueue until a worker took the job")
    compute_ms: float = Field(..., description="this job's share of the batch: preprocessing, forward, its maps")
    batch_ms: float | None = Field(None, description="wall time of the whole batch the job ran in (explain jobs)")
    batch_size: int | None = Field(None, description="jobs executed together with this one (explain jobs)")
    total_ms: float | None = Field(None, description="from the request's arrival (or the job's creation) to its answer")


class AppliedWindow(BaseModel):
    center: float
    width: float
    source: Literal["request", "file", "full_range"]


class ImageInfo(BaseModel):
    """What was read from the image sent, and how it was turned into pixels (no patient data)."""

    format: str = Field(..., description="PNG, JPEG, TIFF, GIF, BMP, WEBP or DICOM")
    mode: str = Field(..., description="the file's pixel mode (PIL mode, or DICOM photometric interpretation)")
    width: int = Field(..., description="after EXIF orientation")
    height: int
    bits: int = Field(..., description="bits per sample as stored (DICOM: bits stored)")
    orientation: int | None = Field(None, description="the EXIF orientation applied (2-8); null: none")
    frame: int | None = Field(None, description="the frame explained, of a multi-frame file")
    frames: int = 1
    window: AppliedWindow | None = Field(None, description="the grey-level window applied (high-bit-depth grey)")
    rescale_slope: float | None = Field(None, description="DICOM modality LUT applied before the window")
    rescale_intercept: float | None = None
    inverted: bool = Field(False, description="DICOM MONOCHROME1: inverted after the window")


class ExplainResponse(BaseModel):
    id: str
    model: str
    image: ImageInfo | None = None
    prediction: Prediction
    target: TargetOut
    explanations: list[Explanation]
    timings: Timings


class JobAccepted(BaseModel):
    id: str
    status: JobStatus = JobStatus.queued


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

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_calls(cls, v: Any) -> Any:
        return names_to_calls(v)

    @model_validator(mode="after")
    def _check(self) -> EvaluateRequest:
        if isinstance(self.ground_truth, list) and len(self.ground_truth) != len(self.images):
            raise ValueError(f"{len(self.ground_truth)} ground truths for {len(self.images)} images")
        problems = check_metrics(list[MetricCall | str](self.metrics), self.ground_truth is not None)
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

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_calls(cls, v: Any) -> Any:
        return names_to_calls(v)

    @model_validator(mode="after")
    def _check(self) -> CompareRequest:
        maps = self.map_a is not None or self.map_b is not None
        if maps:
            if self.map_a is None or self.map_b is None or self.image is not None or self.methods is not None:
                raise ValueError("give map_a and map_b, or model, image and two methods")
        else:
            if not (self.model and self.image and self.methods and len(self.methods) == 2):
                raise ValueError("give map_a and map_b, or model, image and exactly two methods")
        problems = check_metrics(list[MetricCall | str](self.metrics or []), False, for_compare=True)
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


class JobState(BaseModel):
    """GET /v1/jobs/{id}: status and progress; the result (or the problem) once finished. The result
    is the answer of the job's kind: explain (POST /v1/jobs), evaluate or compare (``?wait=false``)."""

    id: str
    status: JobStatus
    progress: float = Field(0.0, ge=0.0, le=1.0)
    model: str | None = None
    result: ExplainResponse | EvaluateResponse | CompareResponse | None = None
    error: ProblemDetails | None = None


# ---- multipart explain ------------------------------------------------------------------


class ExplainForm(BaseModel):
    """POST /v1/explain and /v1/jobs as multipart/form-data: the fields of ExplainRequest, with the image
    as a file. ``methods`` and ``outputs`` are one JSON array, or repeated fields (a method by its name or
    as a JSON MethodCall object). Documents the form only; the gateway validates it as an ExplainRequest."""

    model: str
    image: bytes = Field(..., description="the image file (" + IMAGE_DESCRIPTION.split(": ", 1)[1] + ")")
    methods: list[str] = Field(..., description="method names or JSON MethodCall objects, or one JSON array")
    target: str = Field("predicted", description="class index, class label, or 'predicted'")
    outputs: list[Output] = Field(default_factory=_default_outputs, description="repeated, or one JSON array")
    colormap: Colormap | None = Field(None, description=COLORMAP_DESCRIPTION)
    normalize: Normalize | None = Field(None, description=NORMALIZE_DESCRIPTION)
    reduce: ReduceChoice | None = None
    top_k: int = 5
    colorbar: bool = False
    opacity: float = 0.5
    threshold: float | None = None
    contour: bool = False
    window_center: float | None = Field(None, description=WINDOW_DESCRIPTION)
    window_width: float | None = None
    frame: int | None = Field(None, description=FRAME_DESCRIPTION)


# ---- discovery --------------------------------------------------------------------------


class InputInfo(BaseModel):
    size: list[int] = Field(..., description="(height, width) of the model's input")
    mean: list[float]
    std: list[float]
    channels: int


class LayerInfo(BaseModel):
    name: str
    type: str
    shape: list[int]


class ModelInfo(BaseModel):
    """One model of GET /v1/models: the card its worker published; until a worker did, what the
    registry says (``layers`` and ``methods`` null, ``ready`` false)."""

    name: str
    architecture: str
    description: str | None = None
    classes: list[str]
    num_classes: int
    input: InputInfo
    layers: list[LayerInfo] | None = None
    default_layer: str | None = None
    methods: list[str] | None = Field(None, description="the methods that apply to this model")
    unsupported_methods: dict[str, str] | None = Field(None, description="method -> why it does not apply")
    ready: bool = Field(..., description="a live worker serves the model")


class ModelList(BaseModel):
    models: list[ModelInfo]


class MethodInfo(BaseModel):
    """One method of GET /v1/methods (``schemas.methods.MethodSpec.describe``)."""

    name: str
    family: str
    paper: str = Field(..., description="section of the survey")
    summary: str
    default_reduce: str
    stochastic: bool
    accepts_smoothgrad_modifier: bool
    uses_layer: bool
    signed: bool = Field(
        ..., description="the method's map can be negative under its default reduce (drawn on a diverging colour map)"
    )
    notes: list[str]
    params_schema: dict[str, Any] = Field(..., description="JSON schema of the method's params")


class MethodList(BaseModel):
    methods: list[MethodInfo]


# ---- health and the Open Inference Protocol ---------------------------------------------


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """GET /v2/models/{name} (Open Inference Protocol model metadata)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


# ---- KServe V1 --------------------------------------------------------------------------


class B64(BaseModel):
    b64: str


class KServeInstance(BaseModel):
    """An instance as an object: the base64 image under ``data``, ``b64`` or ``image`` (first given wins),
    itself a string or ``{"b64": ...}``."""

    data: str | B64 | None = None
    b64: str | B64 | None = None
    image: str | B64 | None = None

    def image_b64(self) -> str | None:
        found = next((v for v in (self.data, self.b64, self.image) if v is not None), None)
        return found.b64 if isinstance(found, B64) else found


class KServeExplainRequest(BaseModel):
    """POST /v1/models/{name}:explain: each instance is explained with ``parameters`` (the fields of
    ExplainRequest but model and image; default: Grad-CAM, array output)."""

    instances: list[str | KServeInstance] = Field(..., min_length=1, description="base64 images")
    parameters: dict[str, Any] | None = Field(None, description="ExplainRequest fields for every instance")


class TotalTiming(BaseModel):
    total_ms: float


class KServeExplainResponse(BaseModel):
    predictions: list[Prediction]
    explanations: list[list[Explanation]] = Field(..., description="per instance, one entry per method")
    timings: TotalTiming


JobState.model_rebuild()

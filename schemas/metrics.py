"""The evaluation-metric catalog: the one place that names every metric of
``/v1/evaluate`` and ``/v1/compare``, its family, what it needs (a ground-truth
mask, the model), its parameters and where its definition comes from.

No torch import here: the gateway validates requests with it; the worker
(``workers.evaluation``) maps the same names to implementations and a test
checks both agree.

Families (survey §7):

- ``similarity`` — map vs map (Bylinskii et al. 2019): ``cc``, ``sim``, ``kl``,
  ``auc_judd``, ``auc_borji``, ``nss``, ``ssim``, ``iou``, ``dice``. In
  ``/v1/compare`` the second map is the reference; in ``/v1/evaluate`` the
  reference is the ground-truth mask (so they need one there).
- ``localisation`` — map vs ground truth: ``pointing_game``,
  ``relevance_mass_accuracy``, ``relevance_rank_accuracy``, ``iou_gt``.
- ``complexity`` — ``sparseness`` (Gini index, Chalasani et al. 2020).
- ``faithfulness`` — ``deletion_auc``, ``insertion_auc`` (Petsiuk et al.
  2018), ``faithfulness_correlation`` (Bhatt et al. 2020).
- ``robustness`` — ``robustness_fgsm``, ``robustness_deepfool`` (Galli et
  al. 2021: Dice and CC between the map of x and of its adversarial copy, and
  whether the prediction changed), ``max_sensitivity`` (Yeh et al. 2019).
- ``sanity`` — ``model_randomisation`` (Adebayo et al. 2018, cascading).
- ``cost`` — ``time_ms``: compute time of the method per image.

A metric's value is one number, or for a metric with several ``outputs`` an
object ``{output: number}`` whose first output is the headline number. NaN
(e.g. the pointing game on an empty mask) is sent as ``null``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MetricFamily = Literal["similarity", "localisation", "complexity", "faithfulness", "robustness", "sanity", "cost"]


class MetricParams(BaseModel):
    """Base of every metric's parameters: unknown keys are an error, floats must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class NoParams(MetricParams):
    pass


class FixationParams(MetricParams):
    fixation_quantile: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description=(
            "a continuous reference map's pixels at or above this quantile are its 'fixations'; "
            "a binary reference (a mask) uses its set pixels"
        ),
    )


class AucBorjiParams(FixationParams):
    splits: int = Field(100, ge=1, le=1000, description="number of random negative sets")
    step: float = Field(0.1, gt=0.0, le=0.5, description="threshold step on the [0,1]-normalised map")
    seed: int = Field(0, description="seed of the uniform negative draws")


class QuantileParams(MetricParams):
    quantile: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="each map is binarised at its own quantile (pixels >= it are 'on': 0.8 keeps the top 20 %)",
    )


class SsimParams(MetricParams):
    window: int = Field(7, ge=3, le=31, description="side of the uniform window (odd)")

    @model_validator(mode="after")
    def _odd(self) -> SsimParams:
        if self.window % 2 == 0:
            raise ValueError("window must be odd")
        return self


class PointingParams(MetricParams):
    tolerance: int = Field(
        0,
        ge=0,
        le=64,
        description="a hit may lie this many pixels outside the mask (Zhang et al. use 15 on ImageNet; 0 as Quantus)",
    )


class IouGtParams(MetricParams):
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="the map's positive part is 'on' at or above this fraction of its maximum"
    )


class DeletionParams(MetricParams):
    fill: Literal["blur", "constant"] = Field(
        "constant", description="what a removed pixel becomes: the blurred image or a constant"
    )
    value: float = Field(0.0, ge=0.0, le=1.0, description="constant fill, as a [0,1] pixel intensity")
    sigma: float = Field(5.0, gt=0.0, le=64.0, description="Gaussian blur sigma in pixels (fill=blur)")
    steps: int = Field(32, ge=2, le=1024, description="number of equal-size pixel steps of the curve")
    score: Literal["probability", "logit"] = "probability"
    batch_size: int = Field(33, ge=1, le=1024, description="perturbed images per forward pass")


class InsertionParams(DeletionParams):
    fill: Literal["blur", "constant"] = Field(
        "blur", description="the canvas the pixels are inserted into: the blurred image or a constant"
    )


class FaithfulnessCorrelationParams(MetricParams):
    runs: int = Field(100, ge=2, le=1000, description="number of random subsets")
    subset_size: int = Field(224, ge=1, description="input elements (channel x pixel) per subset")
    value: float = Field(0.0, ge=0.0, le=1.0, description="replacement value as a [0,1] pixel intensity")
    seed: int = Field(0, description="seed of numpy's RandomState drawing the subsets (Quantus' draws)")
    batch_size: int = Field(50, ge=1, le=1024)


class FgsmParams(MetricParams):
    epsilon: float = Field(4 / 255, gt=0.0, le=1.0, description="L_inf step as a [0,1] pixel intensity")
    quantile: float = Field(0.8, gt=0.0, lt=1.0, description="binarisation quantile of the maps for Dice")


class DeepFoolParams(MetricParams):
    overshoot: float = Field(0.02, ge=0.0, le=1.0)
    max_iter: int = Field(50, ge=1, le=500)
    candidates: int = Field(10, ge=2, le=1000, description="classes considered (top scores)")
    quantile: float = Field(0.8, gt=0.0, lt=1.0, description="binarisation quantile of the maps for Dice")


class MaxSensitivityParams(MetricParams):
    radius: float = Field(
        0.02, gt=0.0, le=1.0, description="L_inf radius of the uniform noise, as a [0,1] pixel intensity"
    )
    samples: int = Field(10, ge=1, le=200)
    seed: int = Field(0)


class RandomisationParams(MetricParams):
    layers: int | None = Field(None, ge=1, description="randomise the top k layers (cascading); default all")
    seed: int = Field(42, description="torch seed before each layer's re-initialisation (as Quantus)")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    family: MetricFamily
    summary: str
    reference: str
    params: type[MetricParams] = NoParams
    needs_ground_truth: bool = False  # in /v1/evaluate
    needs_model: bool = False  # runs the model (cannot be computed from two maps)
    higher_is_better: bool | None = True
    outputs: tuple[str, ...] = ()  # several numbers: {output: value}; the first is the headline
    compare: bool = False  # usable in /v1/compare (map vs map)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.summary,
            "reference": self.reference,
            "needs_ground_truth": self.needs_ground_truth,
            "needs_model": self.needs_model,
            "higher_is_better": self.higher_is_better,
            "outputs": list(self.outputs),
            "compare": self.compare,
            "params_schema": self.params.model_json_schema(),
        }


METRICS: dict[str, MetricSpec] = {}


def _metric(**kw: Any) -> MetricSpec:
    spec = MetricSpec(**kw)
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} declared twice")
    METRICS[spec.name] = spec
    return spec


_BYL = (
    "Bylinskii, Judd, Oliva, Torralba, Durand, "
    "'What do different evaluation metrics tell us about saliency models?', TPAMI 41(3) 2019"
)
_sim = dict(family="similarity", needs_ground_truth=True, compare=True)
_metric(name="cc", summary="Pearson correlation coefficient of the two maps", reference=_BYL + ", §3.2.1", **_sim)
_metric(
    name="sim",
    summary="histogram intersection (L1 similarity): sum_i min(P_i, Q_i) of the maps "
    "min-max normalised then scaled to sum 1",
    reference=_BYL + ", §3.2.2",
    **_sim,
)
_metric(
    name="kl",
    summary="KL divergence KL(Q||P) of the reference Q from the map P, both scaled to sum 1 "
    "(eps = 2.2e-16 as the MIT benchmark code)",
    reference=_BYL + ", §3.2.4",
    higher_is_better=False,
    **_sim,
)
_metric(
    name="auc_judd",
    summary="ROC area: thresholds at the map's values on the fixations; TP = fixations above, FP = other pixels above",
    reference=_BYL + ", §3.1.1 (AUC-Judd)",
    params=FixationParams,
    **_sim,
)
_metric(
    name="auc_borji",
    summary="ROC area against negatives drawn uniformly from all pixels, thresholds every "
    "`step`, averaged over `splits`",
    reference=_BYL + ", §3.1.1 (AUC-Borji)",
    params=AucBorjiParams,
    **_sim,
)
_metric(
    name="nss",
    summary="normalised scanpath saliency: mean of the standardised map (ddof 1) on the fixations",
    reference=_BYL + ", §3.1.2",
    params=FixationParams,
    **_sim,
)
_metric(
    name="ssim",
    summary="structural similarity (Gaussian-free: uniform window, K1=0.01, K2=0.03, data "
    "range 1) of the [0,1]-normalised maps",
    reference="Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 13(4) 2004; used for maps by Adebayo et al. 2018",
    params=SsimParams,
    **_sim,
)
_metric(
    name="iou",
    summary="intersection over union of the two maps binarised at their own quantile",
    reference="survey §7 (Selvaraju et al. localisation by IoU)",
    params=QuantileParams,
    **_sim,
)
_metric(
    name="dice",
    summary="Dice coefficient 2|A∩B|/(|A|+|B|) of the maps binarised at their own quantile",
    reference="Dice 1945; used for maps by Galli et al. 2021 (survey §7)",
    params=QuantileParams,
    **_sim,
)

_loc = dict(family="localisation", needs_ground_truth=True)
_metric(
    name="pointing_game",
    summary="1 if the map's maximum falls in the ground truth, else 0",
    reference="Zhang et al., 'Top-down neural attention by excitation backprop', IJCV 2018 (as Quantus)",
    params=PointingParams,
    **_loc,
)
_metric(
    name="relevance_mass_accuracy",
    summary="share of the positive relevance that lies in the ground truth",
    reference="Arras, Osman, Samek, 'CLEVR-XAI', Information Fusion 2022 (as Quantus)",
    **_loc,
)
_metric(
    name="relevance_rank_accuracy",
    summary="share of the K = |ground truth| most relevant pixels that lie in the ground truth",
    reference="Arras, Osman, Samek, 'CLEVR-XAI', Information Fusion 2022 (as Quantus)",
    **_loc,
)
_metric(
    name="iou_gt",
    summary="IoU of the ground truth with the map thresholded at a fraction of its maximum",
    reference="Selvaraju et al., Grad-CAM, ICCV 2017 (weakly supervised localisation)",
    params=IouGtParams,
    **_loc,
)

_metric(
    name="sparseness",
    family="complexity",
    summary="Gini index of |map| (1: one pixel holds everything)",
    reference="Chalasani et al., 'Concise explanations of neural networks using adversarial training', "
    "ICML 2020 (as Quantus Sparseness)",
    higher_is_better=None,
)

_faith = dict(family="faithfulness", needs_model=True)
_metric(
    name="deletion_auc",
    summary="area under the target's score as pixels are removed in decreasing "
    "relevance (lower: the map finds what matters)",
    reference="Petsiuk, Das, Saenko, RISE, BMVC 2018",
    params=DeletionParams,
    higher_is_better=False,
    **_faith,
)
_metric(
    name="insertion_auc",
    summary="area under the target's score as pixels are inserted in decreasing relevance into a blurred canvas",
    reference="Petsiuk, Das, Saenko, RISE, BMVC 2018",
    params=InsertionParams,
    **_faith,
)
_metric(
    name="faithfulness_correlation",
    summary="Pearson correlation, over random subsets, between the "
    "subset's summed relevance and the drop of the target's logit when the subset is replaced",
    reference="Bhatt, Weller, Moura, IJCAI 2020 (as Quantus FaithfulnessCorrelation)",
    params=FaithfulnessCorrelationParams,
    **_faith,
)

_rob = dict(family="robustness", needs_model=True, outputs=("dice", "cc", "prediction_changed"))
_metric(
    name="robustness_fgsm",
    summary="Dice and CC between the map of x and of its FGSM copy (same target), and whether the prediction changed",
    reference="Galli et al., 'Reliability of eXplainable AI in "
    "adversarial perturbation scenarios', 2021 (survey §7); FGSM: Goodfellow et al. 2015",
    params=FgsmParams,
    **_rob,
)
_metric(
    name="robustness_deepfool",
    summary="Dice and CC between the map of x and of its DeepFool copy "
    "(same target), and whether the prediction changed",
    reference="Galli et al. 2021 (survey §7); DeepFool: Moosavi-Dezfooli et al., CVPR 2016",
    params=DeepFoolParams,
    **_rob,
)
_metric(
    name="max_sensitivity",
    summary="max over noisy copies x+d (d uniform in an L_inf ball) of ||map(x+d) - map(x)|| / ||map(x)||",
    reference="Yeh et al., 'On the (in)fidelity and sensitivity of explanations', NeurIPS 2019",
    params=MaxSensitivityParams,
    higher_is_better=False,
    needs_model=True,
    family="robustness",
)

_metric(
    name="model_randomisation",
    family="sanity",
    needs_model=True,
    params=RandomisationParams,
    outputs=("spearman", "ssim", "spearman_last", "ssim_last"),
    higher_is_better=False,
    summary="cascading randomisation from the top layer: similarity of the trained model's map with the maps "
    "of copies whose top k layers are re-initialised (mean over k; '_last': all randomised). A map that "
    "stays similar fails the sanity check",
    reference="Adebayo et al., 'Sanity checks for saliency maps', NeurIPS 2018 (as Quantus MPRT)",
)

_metric(
    name="time_ms",
    family="cost",
    summary="wall-clock compute time of the method per image on this worker",
    reference="survey §7 (Fuad et al. compare computation times)",
    higher_is_better=False,
)

COMPARE_METRICS: tuple[str, ...] = tuple(n for n, s in METRICS.items() if s.compare)
DEFAULT_EVALUATE_METRICS: tuple[str, ...] = (
    "pointing_game",
    "relevance_mass_accuracy",
    "deletion_auc",
    "insertion_auc",
    "sparseness",
    "time_ms",
)


class MetricCall(BaseModel):
    """One requested metric: its name and validated parameters (``"cc"`` or ``{"name", "params"}``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="a metric (docs/evaluation.md)", json_schema_extra={"enum": list(METRICS)})
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> MetricCall:
        spec = METRICS.get(self.name)
        if spec is None:
            raise ValueError(f"unknown metric {self.name!r}; known: {', '.join(METRICS)}")
        self.params = spec.params.model_validate(self.params).model_dump()
        return self


class GroundTruth(BaseModel):
    """A localisation ground truth in the client's image pixels: exactly one of a box, a polygon or a mask."""

    model_config = ConfigDict(extra="forbid")
    box: tuple[float, float, float, float] | None = Field(None, description="x0, y0, x1, y1 (x1, y1 exclusive)")
    polygon: list[tuple[float, float]] | None = Field(None, min_length=3, description="[[x, y], ...]")
    mask_png: str | None = Field(None, description="base64 PNG; non-zero pixels are the object")

    @model_validator(mode="after")
    def _one(self) -> GroundTruth:
        given = [k for k in ("box", "polygon", "mask_png") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of box, polygon, mask_png")
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise ValueError("box must have x1 > x0 and y1 > y0")
        return self


def check_metrics(calls: list[MetricCall | str], has_ground_truth: bool, for_compare: bool = False) -> list[str]:
    """Problems with a metric list (empty when valid): unknown names, a metric that needs a ground truth
    when none is given, a non-map metric in a comparison. The gateway turns them into a 422."""
    problems = []
    for c in calls:
        name = c if isinstance(c, str) else c.name
        spec = METRICS.get(name)
        if spec is None:
            problems.append(f"unknown metric {name!r}")
        elif for_compare and not spec.compare:
            problems.append(f"{name} is not a map-vs-map metric; /v1/compare accepts {', '.join(COMPARE_METRICS)}")
        elif not for_compare and spec.needs_ground_truth and not has_ground_truth:
            problems.append(f"{name} needs a ground truth (box, polygon or mask)")
    return problems


def parse_metric_params(name: str, params: dict[str, Any] | None) -> MetricParams:
    """Validate ``params`` for metric ``name`` (raises KeyError or pydantic ValidationError)."""
    return METRICS[name].params.model_validate(params or {})

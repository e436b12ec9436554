"""§4 of the survey: methods that linearise the network around the input."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.methods.base import CATALOG, Params, SmoothGradModifier, method

LAYER_DOC = (
    "module path as model.named_modules() spells it (e.g. 'layer4', 'features.29'); "
    "default: the registry's target_layer, else the last conv block's output after its ReLU"
)

NAMED_BASELINES = ("black", "white", "blur", "uniform")
Integration = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
BATCH_DOC = "images per forward/backward pass (bounds memory; the result does not depend on it beyond float rounding)"

RECTIFIER_NOTES = (
    "The rule is applied to every *call* of a rectifier, whichever module or function makes it: "
    "nn.ReLU (also when one module is called several times, as in torchvision's ResNet blocks), "
    "in-place ReLUs (VGG, AlexNet) and functional F.relu / torch.relu / Tensor.relu (DenseNet).",
    "Rectifiers other than ReLU: ReLU6 (nn.ReLU6, F.relu6, and F.hardtanh with min_val=0) and "
    "LeakyReLU (nn.LeakyReLU, F.leaky_relu) get the same treatment, with their own forward derivative "
    "f'(x) where the rule uses the forward mask (ReLU6: 0<x<6; LeakyReLU: 1 for x>0, the slope otherwise).",
    "All other non-linearities (ELU, GELU, SiLU/Swish, Hardswish, sigmoid, tanh, clamp, max-pooling) pass "
    "the plain gradient.",
)


def _looks_like_image(s: str) -> bool:
    """A base64 PNG/JPEG (optionally a data: URL): checked from the magic bytes only;
    the worker decodes it fully (and answers 422 if it is corrupt)."""
    if s.startswith("data:"):
        s = s.split(",", 1)[1] if "," in s else ""
    head = s[:24]
    head = head[: len(head) - len(head) % 4]
    try:
        raw = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(b"\x89PNG\r\n\x1a\n") or raw.startswith(b"\xff\xd8\xff")


class GradientParams(Params):
    smoothgrad: SmoothGradModifier | None = Field(
        None,
        description="average the method's map over noisy copies of the input (SmoothGrad modifier, §4.5); "
        "seed null means seed 0",
    )


class SaliencyParams(GradientParams):
    pass


class DeconvNetParams(GradientParams):
    pass


class GuidedBackpropParams(GradientParams):
    pass


class IntegratedGradientsParams(GradientParams):
    steps: int = Field(
        50,
        ge=1,
        le=4096,
        description="number of integration steps: riemann_*/gausslegendre evaluate the gradient at "
        "`steps` points; riemann_trapezoid splits [0,1] into `steps` intervals "
        "(steps+1 points, end points weighted 1/(2 steps))",
    )
    baseline: str = Field(
        "black",
        description="black | white (pixel 0 / 1 of every channel, normalised) | "
        "blur (Gaussian blur of the input, `blur_sigma`) | uniform "
        "(uniform pixel noise in [0,1], `seed`) | a base64 PNG/JPEG image "
        "(resized and normalised like the input)",
    )
    integration: Integration = Field("riemann_trapezoid", description="quadrature rule over alpha in [0, 1]")
    blur_sigma: float | None = Field(
        None,
        gt=0.0,
        le=1000.0,
        description="std of the Gaussian blur baseline, in pixels of the model's input; default min(H, W) / 10",
    )
    internal_batch_size: int = Field(16, ge=1, le=4096, description=BATCH_DOC)
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the uniform-noise baseline (same seed, same map)")

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: str) -> str:
        if v in NAMED_BASELINES or _looks_like_image(v):
            return v
        raise ValueError(
            f"unknown baseline {v[:40]!r}: use one of {', '.join(NAMED_BASELINES)} or a base64 PNG/JPEG image"
        )


class SmoothGradParams(Params):
    samples: int = Field(25, ge=1, le=1000, description="number of noisy copies n of Eq. 8")
    noise_level: float = Field(
        0.15,
        ge=0.0,
        le=10.0,
        description="sigma / (x_max - x_min), x_max and x_min taken per sample over the "
        "whole normalised C x H x W input",
    )
    base: str = Field(
        "saliency",
        description="the gradient method averaged (any method that accepts the "
        "smoothgrad modifier: saliency, deconvnet, guided_backprop, "
        "integrated_gradients, guided_gradcam, ...)",
    )
    base_params: dict[str, Any] | None = Field(None, description="parameters of the base method")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the noise draws (same request and seed, same map)")
    internal_batch_size: int = Field(16, ge=1, le=4096, description=BATCH_DOC)

    @model_validator(mode="after")
    def _check_base(self) -> SmoothGradParams:
        spec = CATALOG.get(self.base)
        if spec is None or not spec.gradient_based:
            ok = sorted(n for n, s in CATALOG.items() if s.gradient_based)
            raise ValueError(f"base {self.base!r} is not a gradient method; use one of {', '.join(ok)}")
        if self.base_params:
            if self.base_params.get("smoothgrad") is not None:
                raise ValueError("base_params must not carry a smoothgrad modifier (smoothgrad is the outer loop)")
            spec.params.model_validate(self.base_params)
        return self

    def base_model(self) -> Params:
        return CATALOG[self.base].params.model_validate(self.base_params or {})


class GradCamParams(Params):
    layer: str | None = Field(None, description=LAYER_DOC)


class GuidedGradCamParams(GradientParams):
    layer: str | None = Field(None, description=LAYER_DOC)


class CamParams(Params):
    layer: str | None = Field(None, description=LAYER_DOC + "; its output must feed the GAP -> linear head")


method(
    name="saliency",
    family="linearization",
    paper="§4.2 Eq. 5-6",
    params=SaliencyParams,
    default_reduce="max_abs",
    gradient_based=True,
    summary="Gradient of the target's score w.r.t. the input; map = max over channels of |gradient| (Simonyan et al.)",
)
method(
    name="deconvnet",
    family="linearization",
    paper="§4.1",
    params=DeconvNetParams,
    default_reduce="max_abs",
    gradient_based=True,
    summary="DeconvNet (Zeiler & Fergus) as a modified backward pass: at each ReLU the backward signal is "
    "rectified, max(g, 0), whatever the forward input was",
    notes=RECTIFIER_NOTES,
)
method(
    name="guided_backprop",
    family="linearization",
    paper="§4.3",
    params=GuidedBackpropParams,
    default_reduce="max_abs",
    gradient_based=True,
    summary="Guided backpropagation (Springenberg et al.): at each ReLU the backward signal passes where the "
    "forward input was positive AND the signal is positive, 1[x>0] * max(g, 0)",
    notes=RECTIFIER_NOTES,
)
method(
    name="integrated_gradients",
    family="linearization",
    paper="§4.4 Eq. 7",
    params=IntegratedGradientsParams,
    default_reduce="sum",
    gradient_based=True,
    summary="(x - x') * integral over alpha of dS_c/dx at x' + alpha (x - x') (Sundararajan et al.), "
    "computed on the normalised input",
    notes=(
        "metadata per sample: completeness_error = sum(attributions) - (S_c(x) - S_c(x')), "
        "relative_error = completeness_error / |S_c(x) - S_c(x')|, score S_c(x), baseline_score S_c(x').",
        "riemann_trapezoid is the textbook rule (weights 1/(2n), 1/n, ..., 1/n, 1/(2n); they sum to 1).",
        "black/white baselines are pixel value 0/1 in every channel, i.e. the model's normalised input bounds.",
    ),
)
method(
    name="smoothgrad",
    family="linearization",
    paper="§4.5 Eq. 8",
    params=SmoothGradParams,
    default_reduce="max_abs",
    stochastic=True,
    summary="Mean of the base method's map over `samples` copies x + N(0, sigma^2), sigma = noise_level * "
    "(x_max - x_min) (Smilkov et al.)",
    notes=(
        "x_max - x_min is measured per sample over the whole normalised C x H x W tensor (as in the "
        "SmoothGrad paper); the noise is added on the normalised input.",
        "Each sample's noise comes from its own generator seeded with `seed` (default 0), so the map of "
        "an image does not depend on the other images batched with it, nor on internal_batch_size.",
        "The same loop is the `smoothgrad` modifier object accepted by every gradient method.",
    ),
)
method(
    name="gradcam",
    signed=False,
    family="linearization",
    paper="§4.6 Eq. 9-10",
    params=GradCamParams,
    default_reduce="single",
    uses_layer=True,
    summary="ReLU(sum_k alpha_k A^k), alpha_k = spatial mean of dS_c/dA^k, upsampled bilinearly (Selvaraju et al.)",
)
method(
    name="guided_gradcam",
    family="linearization",
    paper="§4.6.1",
    params=GuidedGradCamParams,
    default_reduce="max_abs",
    uses_layer=True,
    gradient_based=True,
    summary="Guided backpropagation (C x H x W) times Grad-CAM upsampled bilinearly (align_corners=False)",
    notes=RECTIFIER_NOTES[1:],
)
method(
    name="cam",
    family="linearization",
    paper="§4.6 (Zhou et al.)",
    params=CamParams,
    default_reduce="single",
    uses_layer=True,
    summary="Class activation map sum_k w_{c,k} A^k of a global-average-pool -> linear head, upsampled "
    "bilinearly; signed (no ReLU): its spatial mean plus the bias b_c is S_c",
    notes=(
        "Only for models whose last Linear layer takes the global average pool of the layer's output "
        "(nothing in between but flatten/dropout); other models answer 422 naming the layer.",
        "On such models Grad-CAM = ReLU(CAM) / (h w).",
    ),
)

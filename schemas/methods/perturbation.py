"""§6 (adversarial) and the §2.1 black-box baselines.

Scales used by the parameters (so that one request means the same thing on every model):

- pixel scale: image values in [0, 1] before the model's normalisation. An epsilon of
  8/255 on the pixel scale is ``8/255 / std_c`` in channel c of the normalised input.
- sizes in pixels are pixels of the model's input (after the resize to ``input.size``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.methods.base import Params, method

SEED_DOC = "seed of the random draws; the same seed gives the same map (unset: 0)"
FILL_DOC = (
    "what replaces the hidden pixels: gray (0.5 on the pixel scale), black (0), "
    "mean (the image's per-channel mean), blur (a Gaussian blur of the image)"
)


class AdversarialParams(Params):
    attack: Literal["fgsm", "pgd", "deepfool", "one_pixel"] = Field(
        "pgd",
        description="fgsm (Goodfellow et al.), pgd (Madry et al., L-inf), deepfool (Moosavi-Dezfooli et al.), "
        "one_pixel (Su et al., differential evolution)",
    )
    loss: Literal["log_odds", "margin", "cross_entropy"] = Field(
        "log_odds",
        description="fgsm/pgd/one_pixel: the loss L the attack increases, on the logits z. log_odds: "
        "logsumexp_{j!=t} z_j - z_t = -log(p_t/(1-p_t)); cross-entropy is softplus(L), so the attack "
        "direction is the classical CE one (Goodfellow et al., Madry et al.) but the gradient does not "
        "vanish when p_t rounds to 1 in float32. margin: max_{j!=t} z_j - z_t (Carlini & Wagner). "
        "cross_entropy: CE on the float32 softmax (gives a zero map, with a warning, on saturated "
        "predictions)",
    )
    epsilon: float = Field(
        8 / 255,
        gt=0.0,
        le=1.0,
        description="fgsm/pgd: L-inf radius on the [0,1] pixel scale; in the normalised input it is "
        "epsilon / std of each channel",
    )
    steps: int = Field(10, ge=1, le=1000, description="pgd: number of signed-gradient steps")
    step_size: float | None = Field(
        None, gt=0.0, le=1.0, description="pgd: step on the pixel scale (unset: 2.5 * epsilon / steps)"
    )
    random_start: bool = Field(
        False, description="pgd: start from a uniform point of the epsilon ball (Captum's default is False)"
    )
    overshoot: float = Field(0.02, ge=0.0, le=1.0, description="deepfool: the step is scaled by (1 + overshoot)")
    max_iter: int = Field(50, ge=1, le=1000, description="deepfool: maximum number of linearisation steps")
    candidates: int = Field(
        10, ge=2, le=1000, description="deepfool: number of top-scoring classes considered as the boundary to cross"
    )
    pixels: int = Field(1, ge=1, le=64, description="one_pixel: number of pixels the attack may change")
    population: int = Field(100, ge=4, le=2000, description="one_pixel: differential-evolution population size")
    iterations: int = Field(30, ge=1, le=1000, description="one_pixel: differential-evolution generations")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description=SEED_DOC + " (pgd random_start, one_pixel)")


class OcclusionParams(Params):
    window: int = Field(16, ge=1, le=1024, description="side of the square occluding window, in input pixels")
    stride: int = Field(8, ge=1, le=1024, description="step between window positions (at most window)")
    fill: Literal["gray", "black", "blur", "mean"] = Field("gray", description=FILL_DOC)
    blur_sigma: float | None = Field(
        None, gt=0.0, le=256.0, description="fill=blur: Gaussian sigma in input pixels (unset: window / 2)"
    )

    @model_validator(mode="after")
    def _stride(self) -> OcclusionParams:
        if self.stride > self.window:
            raise ValueError("stride must not exceed window (some pixels would never be occluded)")
        return self


class LimeParams(Params):
    samples: int = Field(500, ge=10, le=20000, description="number of perturbed images (superpixels on/off)")
    segments: int = Field(50, ge=2, le=2000, description="approximate number of superpixels (SLIC n_segments)")
    segmentation: Literal["slic", "quickshift"] = Field("slic", description="superpixel algorithm (scikit-image)")
    fill: Literal["mean", "gray", "black", "blur"] = Field(
        "mean",
        description="what replaces a switched-off superpixel: mean (its own mean colour, as LIME's "
        "hide_color=None), gray, black or blur",
    )
    kernel_width: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="sample weight exp(-d^2 / (2 w^2)), d = cosine distance between the "
        "perturbed and the original normalised input (Captum's default kernel)",
    )
    alpha: float = Field(1.0, ge=0.0, le=1e6, description="ridge penalty of the weighted linear surrogate")
    score: Literal["log_odds", "logit", "probability"] = Field(
        "log_odds",
        description="what the surrogate models: log_odds = log(p_t/(1-p_t)) = z_t - logsumexp_{j!=t} z_j from the "
        "logits (the probability on the logit link, as KernelSHAP's link='logit'); logit = the "
        "pre-softmax score z_t; probability = the softmax p_t (Ribeiro et al.; constant, hence a zero "
        "map with a warning, when the prediction is saturated at p_t = 1.0 in float32)",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description=SEED_DOC)


class MeaningfulParams(Params):
    variant: Literal["deletion", "extremal"] = Field(
        "deletion",
        description="deletion: the smallest blur mask that drops the target score, L1 + TV regularised "
        "(Fong & Vedaldi 2017); extremal: the region of fixed `area` whose preservation keeps "
        "the score highest (Fong, Patrick & Vedaldi 2019)",
    )
    iterations: int = Field(150, ge=1, le=5000, description="Adam steps")
    area: float = Field(0.1, gt=0.0, lt=1.0, description="extremal: fraction of the image the mask keeps")
    blur_sigma: float | None = Field(
        None,
        gt=0.0,
        le=256.0,
        description="sigma of the blur that deletes, in input pixels "
        "(unset: 10 at 224 px, proportionally smaller for smaller inputs)",
    )
    score: Literal["log_odds", "probability"] = Field(
        "log_odds",
        description="deletion: the score the blur drives down. log_odds: the target's log-odds z_t - "
        "logsumexp_{j!=t} z_j from the logits, hinged at the log-odds of `drop_to` and scaled to [0, 1] "
        "by its value on the image (works on saturated predictions and on any logit scale); "
        "probability: the softmax p_t of Fong & Vedaldi 2017 (its gradient is 0, hence a zero map "
        "with a warning, when p_t is exactly 1.0 in float32)",
    )
    drop_to: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="deletion, score=log_odds: the target probability the deletion aims for; "
        "below it the score term is flat and L1/TV shrink the mask",
    )
    l1_coeff: float = Field(0.05, ge=0.0, le=100.0, description="deletion: weight of the mean deleted area (L1)")
    tv_coeff: float = Field(0.2, ge=0.0, le=100.0, description="deletion: weight of the total variation of the mask")
    tv_beta: float = Field(3.0, ge=1.0, le=10.0, description="deletion: exponent of the total-variation term")
    learning_rate: float = Field(0.1, gt=0.0, le=10.0, description="Adam learning rate")
    mask_scale: int = Field(
        8,
        ge=1,
        le=64,
        description="the mask lives on a grid `mask_scale` times coarser than the input and is upsampled bilinearly",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description=SEED_DOC + " (mask jitter)")


class GeneratorParams(Params):
    pass


method(
    name="adversarial",
    family="adversarial",
    paper="§6",
    params=AdversarialParams,
    default_reduce="sum",
    stochastic=True,
    summary="x_adv - x for an untargeted attack pushing the input away from the target class "
    "(fgsm, pgd, deepfool, one_pixel); metadata: flipped, perturbation norms",
    notes=(
        "epsilon and step_size are on the [0,1] pixel scale; x_adv is clamped to the model's input box",
        "one_pixel's map is |x_adv - x| (non-zero exactly at the changed pixels)",
        "the default loss (log_odds, computed from the logits) keeps the cross-entropy attack's direction "
        "and works on saturated predictions (softmax probability exactly 1.0), where the CE gradient is 0",
        "a sample whose map is exactly zero carries a `warning` in its metadata",
    ),
)
method(
    name="adversarial_generators",
    signed=False,
    family="adversarial",
    paper="§6 Eq. 27",
    params=GeneratorParams,
    default_reduce="sum",
    summary="R(x) = |g_s(x) - g_a(x)| (Charachon et al.): a similar-image generator keeps the binary decision, an "
    "adversarial generator flips it; only for models with trained generators",
    notes=("generators are looked up as workers/models/weights/generators-<model name>.safetensors",),
)
method(
    name="occlusion",
    family="black_box",
    paper="§2.1 Fig. 1",
    params=OcclusionParams,
    default_reduce="sum",
    summary="Sliding window (Zeiler & Fergus): relevance of a pixel = drop of the target's pre-softmax score when a "
    "window covering it is hidden, averaged over the windows that cover it",
)
method(
    name="lime",
    family="black_box",
    paper="§2.1",
    params=LimeParams,
    default_reduce="sum",
    stochastic=True,
    summary="LIME (Ribeiro et al.): weighted ridge surrogate of the target's score (log-odds by default) over "
    "superpixels switched on/off; relevance of a pixel = its superpixel's coefficient",
    notes=(
        "score=log_odds (default) and logit are computed from the logits and work on saturated predictions; "
        "score=probability does not (zero map and a `warning` in the metadata)",
    ),
)
method(
    name="meaningful_perturbation",
    signed=False,
    family="black_box",
    paper="§2.1 (Fong & Vedaldi)",
    params=MeaningfulParams,
    default_reduce="sum",
    stochastic=True,
    summary="Blur mask optimised by Adam: deletion (smallest region whose blurring drops the target probability, "
    "L1 + TV) or extremal (fixed-area region whose preservation keeps it); relevance = deleted / kept mask",
    notes=(
        "deletion's default score (log_odds, from the logits) works on saturated predictions; "
        "score=probability (the 2017 paper's) gives a zero map with a `warning` there",
        "a sample whose map is exactly zero carries a `warning` in its metadata",
    ),
)

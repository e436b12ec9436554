"""§5 of the survey: methods that use the structure of the network."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.methods.base import Params, method
from schemas.methods.linearization import LAYER_DOC

LrpRule = Literal["zero", "epsilon", "gamma", "alpha_beta"]
Composite = Literal["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]

COMPOSITE_DOC = (
    "rules by layer (overrides `rule`): epsilon_plus_flat = flat at the first conv/linear layer, z+ at every "
    "other conv, epsilon at dense layers; epsilon_gamma_box = z^B (bounds from the model's input normalisation) "
    "at the first conv, gamma at every other conv, epsilon at dense layers; epsilon_alpha2_beta1 = "
    "alpha=2, beta=1 at every conv, epsilon at dense layers. Residual additions and average pooling: "
    "proportional split; max-pooling: winner takes all; ReLU: relevance passes unchanged"
)


class LrpParams(Params):
    rule: LrpRule = Field(
        "epsilon",
        description="zero (Eq. 12) | epsilon (Eq. 13) | gamma (Eq. 14) | "
        "alpha_beta (Eq. 15); applied at every conv and dense layer",
    )
    epsilon: float = Field(0.25, ge=0.0, le=1e6, description="epsilon of Eq. 13 (added with the sign of z)")
    gamma: float = Field(0.25, ge=0.0, le=1e6, description="gamma of Eq. 14")
    alpha: float = Field(1.0, ge=1.0, le=1e6, description="alpha of Eq. 15 (alpha = beta + 1)")
    beta: float = Field(0.0, ge=0.0, le=1e6, description="beta of Eq. 15")
    bias: bool = Field(
        True,
        description="include the bias neuron in the denominators; false = "
        "'LRP-epsilon ignore bias' (Fig. 9(c)): relevance is conserved",
    )
    composite: Composite | None = Field(None, description=COMPOSITE_DOC)

    @field_validator("composite", mode="before")
    @classmethod
    def _none(cls, v):
        return None if v in ("none", "") else v

    @model_validator(mode="after")
    def _alpha_beta(self) -> LrpParams:
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha must equal beta + 1 (Eq. 15); got alpha={self.alpha}, beta={self.beta}")
        return self


class DeepTaylorParams(Params):
    input_rule: Literal["zbox", "wsquare"] = Field(
        "zbox",
        description="rule at the input layer: zbox = z^B with the pixel box [0,1] mapped through the "
        "model's normalisation; wsquare = w^2 (unbounded input)",
    )


class DeepLiftParams(Params):
    rule: Literal["rescale", "reveal_cancel"] = Field(
        "rescale",
        description="rescale (m = dz/dy at each ReLU) | reveal_cancel (Eqs. 23-25: positive and "
        "negative contributions get separate multipliers)",
    )
    baseline: Literal["black", "white", "uniform", "blur"] = Field(
        "black",
        description="reference input x0: black | white (pixel 0 / 1 of every channel, normalised) | "
        "uniform (uniform pixel noise in [0,1], `seed`; one draw shared by the batch) | "
        "blur (Gaussian blur of the input, `blur_sigma`)",
    )
    blur_sigma: float | None = Field(
        None,
        gt=0.0,
        le=1000.0,
        description="std of the blur baseline in pixels of the model's input; default min(H, W) / 10",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the uniform baseline (same seed, same map)")
    precision: Literal["float64", "float32"] = Field(
        "float64",
        description="arithmetic of the pass: float64 keeps summation-to-delta (Eq. 19) to ~1e-12; "
        "float32 is faster, with rounding errors up to ~1e-4 of the output difference",
    )


STRUCTURE_NOTES = (
    "Applies to models built from conv2d, linear, ReLU (any spelling, reused modules included), max/average "
    "pooling, adaptive average pooling, batch normalisation (folded into the preceding conv) and residual "
    "additions; a model with any other operation on the path (SiLU, Hardswish, GELU, LayerNorm, attention...) "
    "answers 422 naming the first such layer.",
)

method(
    name="lrp",
    family="structure",
    paper="§5.1 Eq. 11-15",
    params=LrpParams,
    default_reduce="sum",
    summary="Layer-wise relevance propagation: the target's pre-softmax score redistributed layer by layer "
    "(rules zero / epsilon / gamma / alpha-beta, or a composite), BatchNorm folded",
    notes=STRUCTURE_NOTES,
)
method(
    name="deep_taylor",
    family="structure",
    paper="§5.1.1 Eq. 16-18",
    params=DeepTaylorParams,
    default_reduce="sum",
    summary="Deep Taylor decomposition: z+ rule in every hidden layer (bias-free), z^B or w^2 at the input",
    notes=STRUCTURE_NOTES,
)
method(
    name="deeplift",
    family="structure",
    paper="§5.2 Eq. 19-25",
    params=DeepLiftParams,
    default_reduce="sum",
    summary="DeepLIFT: contributions of x - x0 to S_c(x) - S_c(x0) (summation to delta); Linear rule at "
    "conv/dense layers, Rescale or RevealCancel at ReLUs",
    stochastic=False,
    notes=STRUCTURE_NOTES + ("meta per sample: delta, attribution_sum and the summation-to-delta error (Eq. 19).",),
)


class FemParams(Params):
    k: float = Field(1.0, ge=0.0, le=10.0, description="K of the K-sigma threshold (Eq. 26)")
    layer: str | None = Field(None, description=LAYER_DOC)


method(
    name="fem",
    family="structure",
    paper="§5.3 Eq. 26",
    params=FemParams,
    default_reduce="single",
    uses_layer=True,
    summary="Feature-based explanation (Fuad et al.): sum_k mean(A_k) * [A_k >= mean_k + K std_k], no gradient",
)

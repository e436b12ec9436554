"""§5 of the survey: methods that use the structure of the network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from schemas.methods.base import Params, method
from schemas.methods.linearization import LAYER_DOC

# ---- LRP rules and composites: names, descriptions and layer -> rule maps (the torch rule objects
# are registered under the same names in workers/explain/rules/lrp.py; a test checks both agree)


@dataclass(frozen=True)
class LrpRuleSpec:
    """An LRP relevance rule: its name, what it is, and whether a request may name it as ``rule``
    (the others are used by composites and deep Taylor decomposition only)."""

    name: str
    description: str
    selectable: bool = False


LRP_RULES: dict[str, LrpRuleSpec] = {}


def lrp_rule(name: str, description: str, selectable: bool = False) -> LrpRuleSpec:
    if name in LRP_RULES:
        raise ValueError(f"LRP rule {name!r} declared twice")
    LRP_RULES[name] = spec = LrpRuleSpec(name, description, selectable)
    return spec


lrp_rule("zero", "Eq. 12", selectable=True)
lrp_rule("epsilon", "Eq. 13", selectable=True)
lrp_rule("gamma", "Eq. 14", selectable=True)
lrp_rule("alpha_beta", "Eq. 15", selectable=True)
lrp_rule("alpha2_beta1", "Eq. 15 with alpha=2, beta=1")
lrp_rule("zplus", "z+: Eq. 15 with alpha=1, beta=0")
lrp_rule("flat", "the w^2 rule with all weights equal")
lrp_rule("zbox", "z^B of deep Taylor decomposition, bounds from the model's input normalisation")
lrp_rule("wsquare", "w^2 of deep Taylor decomposition (unbounded input)")


@dataclass(frozen=True)
class CompositeSpec:
    """A composite: the rule (a name of ``LRP_RULES``) per kind of layer; the first conv/linear
    call of the forward pass takes ``first_conv`` / ``first_dense`` when given."""

    name: str
    description: str
    conv: str
    dense: str
    first_conv: str | None = None
    first_dense: str | None = None

    def rule_for(self, first: bool, conv: bool) -> str:
        special = (self.first_conv if conv else self.first_dense) if first else None
        return special or (self.conv if conv else self.dense)

    @property
    def rule_names(self) -> tuple[str, ...]:
        names = (self.first_conv, self.first_dense, self.conv, self.dense)
        return tuple(dict.fromkeys(n for n in names if n is not None))


COMPOSITES: dict[str, CompositeSpec] = {}


def composite(name: str, description: str, **layer_rules: str) -> CompositeSpec:
    """Declare a composite: ``conv=``, ``dense=`` and optionally ``first_conv=`` / ``first_dense=``."""
    if name in COMPOSITES:
        raise ValueError(f"composite {name!r} declared twice")
    spec = CompositeSpec(name, description, **layer_rules)
    unknown = [r for r in spec.rule_names if r not in LRP_RULES]
    if unknown:
        raise ValueError(f"composite {name!r} names unknown LRP rules {unknown}")
    COMPOSITES[name] = spec
    return spec


composite(
    "epsilon_plus_flat",
    "flat at the first conv/linear layer, z+ at every other conv, epsilon at dense layers",
    first_conv="flat",
    first_dense="flat",
    conv="zplus",
    dense="epsilon",
)
composite(
    "epsilon_gamma_box",
    "z^B (bounds from the model's input normalisation) at the first conv, gamma at every other conv, "
    "epsilon at dense layers",
    first_conv="zbox",
    conv="gamma",
    dense="epsilon",
)
composite(
    "epsilon_alpha2_beta1",
    "alpha=2, beta=1 at every conv, epsilon at dense layers",
    conv="alpha2_beta1",
    dense="epsilon",
)

# the request's choices, built from the registries
if TYPE_CHECKING:  # mypy cannot read a Literal built at run time: it checks them as str
    LrpRule = str
    Composite = str
else:
    LrpRule = Literal[tuple(n for n, r in LRP_RULES.items() if r.selectable)]
    Composite = Literal[tuple(COMPOSITES)]

RULE_DOC = (
    " | ".join(f"{r.name} ({r.description})" for r in LRP_RULES.values() if r.selectable)
    + "; applied at every conv and dense layer"
)
COMPOSITE_DOC = (
    "rules by layer (overrides `rule`): "
    + "; ".join(f"{c.name} = {c.description}" for c in COMPOSITES.values())
    + ". Residual additions and average pooling: proportional split; max-pooling: winner takes all; "
    "ReLU: relevance passes unchanged"
)


class LrpParams(Params):
    rule: LrpRule = Field("epsilon", description=RULE_DOC)
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
    def _none(cls, v: object) -> object:
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
    signed=False,
    family="structure",
    paper="§5.3 Eq. 26",
    params=FemParams,
    default_reduce="single",
    uses_layer=True,
    summary="Feature-based explanation (Fuad et al.): sum_k mean(A_k) * [A_k >= mean_k + K std_k], no gradient",
)

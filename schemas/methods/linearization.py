"""§4 of the survey: methods that linearise the network around the input."""
from __future__ import annotations

from pydantic import Field

from schemas.methods.base import Params, SmoothGradModifier, method

LAYER_DOC = ("module path as model.named_modules() spells it (e.g. 'layer4', 'features.29'); "
             "default: the registry's target_layer, else the last conv block's output after its ReLU")


class GradientParams(Params):
    smoothgrad: SmoothGradModifier | None = Field(None, description="average over noisy copies (SmoothGrad modifier)")


class SaliencyParams(GradientParams):
    pass


class GradCamParams(Params):
    layer: str | None = Field(None, description=LAYER_DOC)


method(name="saliency", family="linearization", paper="§4.2 Eq. 5-6", params=SaliencyParams,
       default_reduce="max_abs", gradient_based=True,
       summary="Gradient of the target's score w.r.t. the input; map = max over channels of |gradient| (Simonyan et al.)")
method(name="gradcam", family="linearization", paper="§4.6 Eq. 9-10", params=GradCamParams,
       default_reduce="single", uses_layer=True,
       summary="ReLU(sum_k alpha_k A^k), alpha_k = spatial mean of dS_c/dA^k, upsampled bilinearly (Selvaraju et al.)")

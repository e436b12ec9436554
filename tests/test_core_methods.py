"""saliency, Grad-CAM and FEM against Captum and the FEM formula (issue 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam, Saliency

from tests.helpers import demo_model, max_rel_diff, seeded_torchvision
from workers.explain import attribute
from workers.explain.postprocess import reduce_channels

MODELS = ["resnet18", "vgg11", "demo"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(1)
    if request.param == "demo":
        return demo_model()
    return seeded_torchvision(request.param, size=64)


def batch(model, n=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.channels, *model.input_size, generator=g)


def test_saliency_matches_captum(model):
    x = batch(model)
    t = torch.tensor([1, 7])
    ours = reduce_channels(attribute(model, x, t, "saliency").maps, "max_abs")
    ref = Saliency(model.module).attribute(x.clone().requires_grad_(True), target=t, abs=True)
    ref = ref.max(dim=1, keepdim=True).values
    assert ours.shape == ref.shape
    assert max_rel_diff(ours, ref) <= 1e-5


def test_gradcam_matches_captum(model):
    x = batch(model)
    t = torch.tensor([2, 5])
    a = attribute(model, x, t, "gradcam")
    layer = a.used_params["layer"]
    ref = LayerGradCam(model.module, model.module_at(layer)).attribute(x, target=t, relu_attributions=True)
    ref = F.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert max_rel_diff(a.maps, ref) <= 1e-5


def test_gradcam_layer_param_and_inplace_relu():
    """vgg11's conv at features.18 is followed by an in-place ReLU; Grad-CAM at the conv
    must use the conv's own output (Captum's LayerGradCam is right there)."""
    m = seeded_torchvision("vgg11", size=64)
    x = batch(m)
    t = torch.tensor([0, 3])
    a = attribute(m, x, t, "gradcam", {"layer": "features.18"})
    ref = LayerGradCam(m.module, m.module_at("features.18")).attribute(x, target=t, relu_attributions=True)
    ref = F.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert max_rel_diff(a.maps, ref) <= 1e-5


def fem_reference(acts: np.ndarray, k: float) -> np.ndarray:
    """Eq. 26 written out per channel in numpy, for one sample (K, h, w)."""
    r = np.zeros(acts.shape[1:], dtype=np.float64)
    for a in acts.astype(np.float64):
        mu, sigma = a.mean(), a.std()  # population std (ddof 0)
        r += mu * (a >= mu + k * sigma)
    lo, hi = r.min(), r.max()
    return (r - lo) / (hi - lo) if hi > lo else np.zeros_like(r)


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_fem_matches_formula(model, k):
    x = batch(model)
    a = attribute(model, x, 0, "fem", {"k": k})
    layer = a.used_params["layer"]
    acts = {}
    h = model.module_at(layer).register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model.module(x)
    h.remove()
    for i in range(x.shape[0]):
        ref = torch.from_numpy(fem_reference(acts["a"][i].numpy(), k)).float()[None, None]
        ref = F.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        assert torch.allclose(a.maps[i], ref, atol=1e-5)
    assert a.maps.min() >= 0 and a.maps.max() <= 1


def test_fem_needs_no_gradient_and_ignores_target(model):
    x = batch(model)
    a0 = attribute(model, x, 0, "fem").maps
    a1 = attribute(model, x, 9, "fem").maps
    assert torch.equal(a0, a1)


def test_unknown_layer_is_a_method_error(model):
    from workers.errors import MethodError

    with pytest.raises(MethodError, match="unknown layer"):
        attribute(model, batch(model), 0, "gradcam", {"layer": "no.such.layer"})


def test_default_layers_are_last_conv_block_after_relu():
    assert seeded_torchvision("resnet18").default_layer == "layer4"
    assert seeded_torchvision("vgg11").default_layer == "features.19"
    assert seeded_torchvision("alexnet", size=96).default_layer == "features.11"
    assert demo_model().layers["features.10"].shape == (64, 8, 8)

"""SmoothGrad (§4.5 Eq. 8, issue 3): against Captum's NoiseTunnel fed the same noise
draws, the modifier on any gradient method, determinism per seed, batching.

The noise the service draws is part of its contract: per sample i, a torch.Generator
seeded with `seed`, one standard-normal (C, H, W) draw per noisy copy in order, times
sigma_i = noise_level * (max(x_i) - min(x_i)) over the whole normalised input. The
tests build that noise themselves and hand it to NoiseTunnel."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

from tests.test_lin_refs import batch, double, get_model, max_rel_diff, record, reference_net
from workers.explain import attribute
from workers.explain.base import Progress

TOL = 1e-4


def contract_noise(x: torch.Tensor, samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """(N * samples, C, H, W) in Captum's order (sample-major: x_0 copies, then x_1 copies...)."""
    out = []
    for i in range(x.shape[0]):
        g = torch.Generator().manual_seed(seed)
        sigma = noise_level * float(x[i].detach().max() - x[i].detach().min())
        out += [sigma * torch.randn(x.shape[1:], generator=g) for _ in range(samples)]
    return torch.stack(out)


def noise_tunnel(monkeypatch, attr_method, x, t, samples, noise_level, seed, **kw):
    noise = contract_noise(x, samples, noise_level, seed)

    def add_noise(inp, stdev, nt_samples_partition):
        assert nt_samples_partition == samples
        return inp.repeat_interleave(nt_samples_partition, dim=0) + noise.to(inp.dtype)

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_noise))
    return NoiseTunnel(attr_method).attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=1.0, target=t, **kw)


CASES = [
    ("demo", "saliency"),
    ("resnet18", "saliency"),
    ("alexnet", "saliency"),
    ("demo", "guided_backprop"),
    ("resnet18", "guided_backprop"),
    ("alexnet", "deconvnet"),
    ("vgg11", "guided_backprop"),
]


@pytest.mark.parametrize("model_name,base", CASES)
def test_matches_noise_tunnel(monkeypatch, model_name, base):
    m = get_model(model_name)
    x = batch(m)
    t = torch.tensor([2, 6])
    a = attribute(
        m, x, t, "smoothgrad", {"base": base, "samples": 4, "noise_level": 0.2, "seed": 5, "internal_batch_size": 3}
    )
    net = reference_net(model_name)  # one ReLU module per call: Captum's rules are right on it
    method = {"saliency": Saliency(net), "guided_backprop": GuidedBackprop(net), "deconvnet": Deconvolution(net)}[base]
    kw = {"abs": False} if base == "saliency" else {}
    ref = noise_tunnel(monkeypatch, method, x.clone().requires_grad_(True), t, 4, 0.2, 5, **kw)
    d = max_rel_diff(a.maps, ref)
    record(f"smoothgrad (base {base})", model_name, "Captum NoiseTunnel, same noise", d)
    assert d <= TOL
    assert [mm["noise_sigma"] for mm in a.meta] == pytest.approx(
        [0.2 * float(x[i].max() - x[i].min()) for i in range(2)]
    )


@pytest.mark.parametrize("model_name", ["demo", "resnet18"])
def test_over_integrated_gradients_matches_noise_tunnel(monkeypatch, model_name):
    from captum.attr._utils.approximation_methods import approximation_parameters

    from workers.explain import integrated
    from workers.explain.integrated import quadrature

    alphas_c = approximation_parameters("riemann_left")[1]  # Captum's float32 nodes (see test_lin_integrated)
    monkeypatch.setattr(
        integrated, "quadrature", lambda n, r: (torch.tensor(alphas_c(n)).double().numpy(), quadrature(n, r)[1])
    )
    m = get_model(model_name)
    x = batch(m)
    t = torch.tensor([1, 8])
    ig = {"steps": 4, "integration": "riemann_left", "internal_batch_size": 64}
    a = attribute(
        m,
        x,
        t,
        "smoothgrad",
        {"base": "integrated_gradients", "base_params": ig, "samples": 3, "seed": 2, "internal_batch_size": 6},
    )
    # Captum's IG gets the noisy copies and a black baseline (pixel 0 of each channel) for each
    mean, std = m.mean_std()
    black = ((0 - mean) / std).expand(1, *x.shape[1:]).clone()
    ref = noise_tunnel(
        monkeypatch, IntegratedGradients(m.module), x, t, 3, 0.15, 2, baselines=black, n_steps=4, method="riemann_left"
    )
    d = max_rel_diff(a.maps, ref)
    record("smoothgrad (base integrated_gradients)", model_name, "Captum NoiseTunnel, same noise", d)
    assert d <= TOL
    # the modifier form gives the same map
    b = attribute(m, x, t, "integrated_gradients", {**ig, "smoothgrad": {"samples": 3, "seed": 2}})
    assert max_rel_diff(b.maps, a.maps) <= 1e-6
    assert b.used_params["smoothgrad"] == {"samples": 3, "noise_level": 0.15, "seed": 2}


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided_backprop", "guided_gradcam"])
def test_modifier_equals_method(method):
    m = get_model("demo")
    x = batch(m)
    t = torch.tensor([0, 3])
    sg = {"samples": 5, "noise_level": 0.1, "seed": 9}
    a = attribute(m, x, t, method, {"smoothgrad": sg})
    b = attribute(m, x, t, "smoothgrad", {"base": method, **sg})
    assert torch.allclose(a.maps, b.maps, rtol=0, atol=1e-7 * float(b.maps.abs().max()))
    plain = attribute(m, x, t, method).maps
    assert max_rel_diff(a.maps, plain) > 1e-3  # the noise does change the map
    assert a.maps.shape == plain.shape


def test_seed_default_and_determinism():
    m = get_model("demo")
    x = batch(m)
    a = attribute(m, x, 1, "smoothgrad", {"samples": 4}).maps
    assert torch.equal(a, attribute(m, x, 1, "smoothgrad", {"samples": 4, "seed": 0}).maps)  # default seed 0
    assert torch.equal(a, attribute(m, x, 1, "saliency", {"smoothgrad": {"samples": 4}}).maps)  # modifier: null -> 0
    assert max_rel_diff(attribute(m, x, 1, "smoothgrad", {"samples": 4, "seed": 1}).maps, a) > 1e-3


def test_batch_and_chunk_independence():
    """An image's map depends neither on the images batched with it nor on internal_batch_size
    (float64 model: see tests/test_lin_refs.double)."""
    m = double(get_model("demo"))
    x = batch(m, n=3).double()
    t = torch.tensor([1, 4, 7])
    p = {"samples": 5, "seed": 3, "base": "guided_backprop"}
    ref = attribute(m, x, t, "smoothgrad", {**p, "internal_batch_size": 16}).maps
    for bs in (1, 4):
        assert max_rel_diff(attribute(m, x, t, "smoothgrad", {**p, "internal_batch_size": bs}).maps, ref) <= 1e-10
    alone = attribute(m, x[2:], t[2:], "smoothgrad", p).maps
    assert max_rel_diff(alone[0], ref[2]) <= 1e-10


def test_zero_noise_is_the_base_map():
    m = get_model("demo")
    x = batch(m)
    a = attribute(m, x, 2, "smoothgrad", {"samples": 3, "noise_level": 0.0, "base": "deconvnet"}).maps
    assert max_rel_diff(a, attribute(m, x, 2, "deconvnet").maps) <= 1e-6


def test_progress_and_used_params():
    m = get_model("demo")
    seen = []
    a = attribute(
        m,
        batch(m),
        0,
        "smoothgrad",
        {
            "samples": 3,
            "internal_batch_size": 2,
            "base": "integrated_gradients",
            "base_params": {"steps": 2, "internal_batch_size": 4},
        },
        progress=Progress(report=seen.append),
    )
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) > 3
    assert a.used_params["base"] == "integrated_gradients"
    assert a.used_params["base_params"]["steps"] == 2 and a.used_params["seed"] == 0

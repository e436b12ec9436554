"""Models for the structure-family tests (LRP, deep Taylor, DeepLIFT): seeded
torchvision nets with non-trivial BatchNorm statistics, cached per test session."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torchvision

from schemas.registry import ModelEntry
from workers.models.loading import LoadedModel, load_model
from workers.models.shapes_cnn import ShapesCNN

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def perturb_batchnorm(net: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters, so that folding BN is really tested
    (a fresh torchvision BN is the identity in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.6 * torch.rand(c, generator=g) - 0.3)


def wrap(net: nn.Module, name: str, size: int = 64, norm: dict | None = None) -> LoadedModel:
    entry = ModelEntry(
        name=name, architecture=f"test.{name}", num_classes=10, input={"size": [size, size], **(norm or IMAGENET)}
    )
    return load_model(entry, module=net)


@functools.cache
def model(arch: str, size: int = 64, seed: int = 0) -> LoadedModel:
    """Seeded model by name (torchvision architectures or 'shapes' = the demo ShapesCNN)."""
    torch.manual_seed(seed)
    if arch == "shapes":
        return wrap(ShapesCNN(), "shapes", size, {"mean": [0.5] * 3, "std": [0.25] * 3})
    net = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    with torch.no_grad():
        perturb_batchnorm(net, seed + 1)
        if arch.startswith(("vgg", "alexnet")):  # torchvision's N(0, 0.01) dense init gives logits ~1e-2
            for lin in net.classifier:
                if isinstance(lin, nn.Linear):
                    lin.weight.mul_(6.0)
    return wrap(net, arch, size)


def image_batch(m: LoadedModel, n: int = 1, seed: int = 1) -> torch.Tensor:
    """Normalised images whose pixels lie in [0, 1] (inside the z^B box)."""
    g = torch.Generator().manual_seed(seed)
    pix = torch.rand((n, m.channels, *m.input_size), generator=g)
    mean, std = m.mean_std()
    return (pix - mean) / std


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a fraction of b's range."""
    rng = float(b.max() - b.min())
    return float((a - b).abs().max()) / (rng if rng > 0 else 1.0)

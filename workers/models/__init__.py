"""Architectures the registry can name: ``whitebox.<name>``, ``torchvision.<name>`` or ``module:callable``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from workers.models.binary_cnn import binary_cnn
from workers.models.lesion_cnn import lesion_cnn
from workers.models.shapes_cnn import ShapesCNN

# the committed weights of the models made here (demo models, generators)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

WHITEBOX_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "shapes_cnn": ShapesCNN,
    "binary_cnn": binary_cnn,
    "lesion_cnn": lesion_cnn,
}


def build_architecture(architecture: str, num_classes: int) -> nn.Module:
    """Instantiate an architecture with fresh (untrained) weights; never downloads anything."""
    if architecture.startswith("whitebox."):
        name = architecture.split(".", 1)[1]
        if name not in WHITEBOX_ARCHITECTURES:
            raise ValueError(f"unknown whitebox architecture {architecture!r}")
        return WHITEBOX_ARCHITECTURES[name](num_classes=num_classes)
    if architecture.startswith("torchvision."):
        import torchvision.models as tvm

        name = architecture.split(".", 1)[1]
        if name not in tvm.list_models(module=tvm):
            raise ValueError(f"unknown torchvision architecture {architecture!r}")
        return tvm.get_model(name, weights=None, num_classes=num_classes)
    if ":" in architecture:
        mod, fn = architecture.split(":", 1)
        return getattr(importlib.import_module(mod), fn)(num_classes=num_classes)
    raise ValueError(f"architecture {architecture!r}: expected whitebox.<name>, torchvision.<name> or module:callable")

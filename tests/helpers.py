"""Shared test helpers: seeded torchvision models wrapped as registry models, images."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from schemas.registry import ModelEntry, load_registry
from workers.models.loading import LoadedModel, load_model

# cheap method settings for tests that run every method through the stack (defaults: the unit tests)
FAST = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4, "seed": 1},
    "occlusion": {"window": 16, "stride": 16},
    "lime": {"samples": 40, "segments": 12, "seed": 1},
    "meaningful_perturbation": {"iterations": 4},
    "adversarial": {"attack": "fgsm"},
}

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def seeded_torchvision(arch: str, size: int = 64, seed: int = 0, num_classes: int = 10) -> LoadedModel:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    entry = ModelEntry(
        name=arch, architecture=f"torchvision.{arch}", num_classes=num_classes, input={"size": [size, size], **IMAGENET}
    )
    return load_model(entry, module=net)


def demo_model() -> LoadedModel:
    reg = load_registry()
    return load_model(reg.get("shapes-cnn"), reg)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(arr: np.ndarray) -> str:
    return base64.b64encode(png_bytes(arr)).decode()


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a fraction of b's range (the issues' agreement measure)."""
    rng = float(b.max() - b.min())
    return float((a - b).abs().max()) / (rng if rng > 0 else 1.0)


def bundled_registry(tmp: Path, names: list[str]) -> Path:
    """A registry file in ``tmp`` serving the bundled registry's entries ``names``, with their committed
    weights (absolute paths, so the file can live anywhere)."""
    import yaml

    from workers.models import WEIGHTS_DIR

    models = []
    for name in names:
        e = load_registry().get(name)
        assert e is not None, f"{name} is not in the bundled registry"
        d = e.model_dump(mode="json", exclude_none=True)
        d["weights"] = str(WEIGHTS_DIR / f"{name}.safetensors")
        if "labels_file" in d:
            d["labels_file"] = str(WEIGHTS_DIR / f"{name}.labels.txt")
        models.append(d)
    path = tmp / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path

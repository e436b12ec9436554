"""Loading registry models once: weights (safetensors, or a weights_only state_dict),
eval mode, frozen parameters, and the layer table that `layer` params refer to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file

from schemas.registry import ModelEntry, Registry
from workers.errors import MethodError
from workers.models import build_architecture
from workers.models.hooks import forward_hooks

POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten)


@dataclass
class LayerInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # (C, h, w) for the model's input size


class InputSpace:
    """The model's input as the registry entry declares it: size, channels and the per-channel
    normalisation; ``preprocess`` maps PIL images into that space (mixed into LoadedModel)."""

    entry: ModelEntry
    device: torch.device

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.entry.input.size)  # (H, W)

    @property
    def channels(self) -> int:
        return self.entry.input.channels

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(self.entry.input.mean, device=self.device).view(1, -1, 1, 1)
        s = torch.tensor(self.entry.input.std, device=self.device).view(1, -1, 1, 1)
        return m, s

    def pixel_to_input(self, value: float) -> torch.Tensor:
        """A [0,1] pixel intensity as the normalised input value of each channel, shape (1, C, 1, 1)."""
        m, s = self.mean_std()
        return (value - m) / s

    def input_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of the normalised input: images of [0,1] pixels."""
        return self.pixel_to_input(0), self.pixel_to_input(1)

    def to_model_image(self, img: Image.Image) -> Image.Image:
        """The image at the model's size: 8-bit ``L`` or ``RGB`` as the model has channels, or a mode
        ``F`` grey image (levels in [0, 255] after its window) kept in float, never rounded to 8 bits."""
        if img.mode != "F":
            img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.input_size
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        return img

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised (N, C, H, W) float32 tensor on the model's device (grey read into
        every channel of a colour model, as ``convert("RGB")`` does)."""
        arrs = []
        for img in images:
            a = np.asarray(self.to_model_image(img), dtype=np.float32) / 255.0
            arrs.append(np.repeat(a[None], self.channels, axis=0) if a.ndim == 2 else a.transpose(2, 0, 1))
        x = torch.from_numpy(np.stack(arrs)).to(self.device)
        m, s = self.mean_std()
        return (x - m) / s


@dataclass
class LoadedModel(InputSpace):
    """A registry model ready to explain: the frozen network in eval mode on its device, its
    labels and the table of layers that ``layer`` params name."""

    name: str
    entry: ModelEntry
    module: nn.Module
    labels: list[str]
    device: torch.device
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    default_layer: str | None = None

    @property
    def num_classes(self) -> int:
        return self.entry.num_classes

    # ---- layers --------------------------------------------------------------------
    def resolve_layer(self, name: str | None, method: str) -> str:
        name = name or self.entry.target_layer or self.default_layer
        if name is None:
            raise MethodError(f"{method} needs a convolutional layer and model {self.name!r} has none")
        if name not in self.layers:
            raise MethodError(
                f"unknown layer {name!r} for model {self.name!r}; usable layers: {', '.join(self.layers)}",
                field="layer",
            )
        return name

    def module_at(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)

    def card(self, methods: dict[str, str | None]) -> dict:
        """The public description of this model (GET /v1/models)."""
        return {
            "name": self.name,
            "architecture": self.entry.architecture,
            "description": self.entry.description,
            "classes": self.labels,
            "num_classes": self.num_classes,
            "input": {
                "size": list(self.input_size),
                "mean": self.entry.input.mean,
                "std": self.entry.input.std,
                "channels": self.channels,
            },
            "layers": [{"name": li.name, "type": li.type, "shape": list(li.shape)} for li in self.layers.values()],
            "default_layer": self.entry.target_layer or self.default_layer,
            "methods": sorted(k for k, v in methods.items() if v is None),
            "unsupported_methods": {k: v for k, v in methods.items() if v is not None},
        }


def load_weights(module: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:  # a plain state_dict; never unpickle arbitrary objects
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)


def layer_table(module: nn.Module, channels: int, size: tuple[int, int]) -> tuple[dict[str, LayerInfo], str | None]:
    """Run one dummy forward and list the modules whose output is a feature map.

    The default layer is the last conv block's output after its ReLU: the last
    module, in completion order after the last Conv2d, whose output keeps that
    conv's spatial size (pooling ends the block)."""
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def record(name: str):
        def hook(m, inp, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                order.append((name, m, tuple(out.shape[1:])))

        return hook

    with forward_hooks([(mod, record(name)) for name, mod in module.named_modules() if name]), torch.inference_mode():
        module(torch.zeros(1, channels, *size))
    table: dict[str, LayerInfo] = {}
    for name, m, shape in order:
        if shape[1] * shape[2] > 1 and name not in table:
            table[name] = LayerInfo(name, type(m).__name__, shape)
    last_conv = max((i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Conv2d)), default=None)
    default = None
    if last_conv is not None:
        hw = order[last_conv][2][1:]
        default = order[last_conv][0]
        for name, m, shape in order[last_conv + 1 :]:
            if shape[1:] != hw or isinstance(m, POOLING):
                break
            default = name
    return table, default


def load_model(
    entry: ModelEntry,
    registry: Registry | None = None,
    device: str | torch.device = "cpu",
    module: nn.Module | None = None,
) -> LoadedModel:
    """Build, load and freeze one registry model. ``module`` skips building (tests pass seeded nets)."""
    if module is None:
        module = build_architecture(entry.architecture, entry.num_classes)
        if entry.weights:
            path = registry.resolve(entry.weights) if registry else Path(entry.weights)
            load_weights(module, path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    dev = torch.device(device)
    module.to(dev)
    labels = registry.labels_of(entry) if registry else (entry.labels or [str(i) for i in range(entry.num_classes)])
    layers, default = layer_table(module, entry.input.channels, tuple(entry.input.size))
    return LoadedModel(
        name=entry.name, entry=entry, module=module, labels=labels, device=dev, layers=layers, default_layer=default
    )

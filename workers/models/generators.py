"""The networks of the two-generator explainer (Charachon et al., survey §6 Eq. 27).

- the fixed binary classifier the generators are trained against is
  :mod:`workers.models.binary_cnn` (registry architecture ``whitebox.binary_cnn``).
- ``GeneratorPair``: a similar-image generator g_s and an adversarial generator g_a that
  share one encoder (they "sample from the same space" and differ only in their
  decoders, which start from the same weights); g_a has one decoder per direction of the
  binary decision, picked by the classifier's decision on x. Each decoder predicts a bounded
  residual: g(x) = clamp(x + b * tanh(delta(x) / b)) to the model's input box. A small U-Net:
  64 -> 32 -> 16 px and back with skip connections.

Weights file: ``generators-<model name>.safetensors`` with metadata naming the classifier
(``classifier_sha256``, a hash of its parameters) so that a retrained classifier is never
explained with stale generators."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.models import WEIGHTS_DIR


def _conv(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    def __init__(self, channels: int, w: int):
        super().__init__()
        self.up2 = _conv(4 * w + 2 * w, 2 * w)
        self.up1 = _conv(2 * w + w, w)
        self.out = nn.Conv2d(w, channels, 1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor) -> torch.Tensor:
        d = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d = self.up2(torch.cat([d, e2], 1))
        d = F.interpolate(d, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        d = self.up1(torch.cat([d, e1], 1))
        return self.out(d)


class GeneratorPair(nn.Module):
    """g_s and g_a over one shared encoder.

    ``adversarial`` holds one decoder per direction: ``adversarial[d]`` edits an image the
    classifier decides as class d so that it is decided as 1 - d. The generator's receptive
    field is local (about 20 px) and "remove the evidence of class 1" and "add evidence of
    class 1" are opposite edits, so a single decoder cannot know which to do; the
    classifier's decision on x (available wherever the explanation is computed) picks the
    decoder. Both adversarial decoders and the similar one start from the same weights.

    Each decoder predicts a residual, bounded: g(x) = clamp(x + bound * tanh(delta(x) / bound))
    to the input box."""

    def __init__(self, channels: int = 3, width: int = 8, bound: float = 2.0):
        super().__init__()
        w = width
        self.bound = float(bound)
        self.enc1 = _conv(channels, w)
        self.enc2 = _conv(w, 2 * w, stride=2)
        self.enc3 = nn.Sequential(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w))
        self.similar = Decoder(channels, w)
        self.adversarial = nn.ModuleList([Decoder(channels, w), Decoder(channels, w)])
        for dec in self.adversarial:
            dec.load_state_dict(self.similar.state_dict())

    def encode(self, x: torch.Tensor):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        return e1, e2, self.enc3(e2)

    def _edit(self, x, delta, lo, hi):
        delta = self.bound * torch.tanh(delta / self.bound)
        return torch.max(torch.min(x + delta, hi), lo)

    def forward(
        self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, decision: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(g_s(x), g_a(x)), both in the input box [lo, hi] (per channel); ``decision`` (N,) in {0, 1}:
        the classifier's decision on x, which selects the adversarial decoder."""
        e = self.encode(x)
        gs = self._edit(x, self.similar(*e), lo, hi)
        delta = torch.zeros_like(x)
        for k in (0, 1):
            sel = decision == k
            if bool(sel.any()):
                delta = delta.index_put((sel,), self.adversarial[k](*(t[sel] for t in e)))
        ga = self._edit(x, delta, lo, hi)
        return gs, ga


def fingerprint(module: nn.Module) -> str:
    """sha256 of a network's parameters and buffers (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def generators_path(model_name: str) -> Path:
    return WEIGHTS_DIR / f"generators-{model_name}.safetensors"


def save_generators(pair: GeneratorPair, path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in pair.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in meta.items()})


def load_generators(path: Path) -> tuple[GeneratorPair, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    pair = GeneratorPair(
        channels=int(meta.get("channels", 3)), width=int(meta.get("width", 8)), bound=float(meta.get("bound", 2.0))
    )
    pair.load_state_dict(load_file(str(path)), strict=True)
    pair.eval()
    for p in pair.parameters():
        p.requires_grad_(False)
    return pair, meta

"""Shared pieces of the benchmarks: models, inputs, interleaved timing, the machine."""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TORCHVISION = ("resnet18", "resnet50", "vgg16", "vgg11", "mobilenet_v3_small")


def build_model(name: str, size: int = 224, num_classes: int = 1000, seed: int = 0):
    """``demo``: the registry's trained shapes-cnn at its own 64x64 input; a torchvision
    architecture: seeded random weights (never downloaded) at ``size`` x ``size``."""
    from schemas.registry import ModelEntry, load_registry
    from workers.models.loading import load_model

    if name in ("demo", "shapes-cnn"):
        reg = load_registry()
        return load_model(reg.get("shapes-cnn"), reg)
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    entry = ModelEntry(
        name=name, architecture=f"torchvision.{name}", num_classes=num_classes, input={"size": [size, size], **IMAGENET}
    )
    return load_model(entry, module=net)


def reference_copy(net: nn.Module) -> nn.Module:
    """The same network for Captum/Zennit, with in-place ReLUs made out-of-place (their module
    hooks refuse in-place ops); the arithmetic is unchanged."""
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ref.eval()
    return ref


def inputs(model, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of [0,1] pixels normalised like the model's input, and targets."""
    g = torch.Generator().manual_seed(seed)
    px = torch.rand((batch, model.channels, *model.input_size), generator=g)
    m, s = model.mean_std()
    t = torch.randint(0, model.num_classes, (batch,), generator=g)
    return (px - m) / s, t


@dataclass
class Timing:
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")


def interleaved(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1, budget_s: float | None = None
) -> dict[str, Timing]:
    """Median-able timings of several callables, run in turn (ours, reference, floor, ours, ...)
    so a change of machine load hits them alike. ``budget_s`` stops early (at least 3 runs)."""
    out = {k: Timing() for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    t_start = time.perf_counter()
    for r in range(runs):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].runs.append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return out


def machine() -> dict:
    import captum
    import torchvision

    try:
        import zennit

        zv = getattr(zennit, "__version__", None) or _dist_version("zennit")
    except ImportError:  # pragma: no cover
        zv = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum.__version__,
        "zennit": zv,
        "loadavg": load,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def fmt_ms(s: float | None) -> str:
    """Seconds -> milliseconds with 3 significant digits ('-' when missing)."""
    if s is None or s != s:
        return "-"
    ms = s * 1000
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or r != r else f"{r:.2f}"

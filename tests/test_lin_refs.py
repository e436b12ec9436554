"""Shared models and the independent references of the linearization-family tests
(issue 3), plus tests of those references themselves.

``one_relu_per_call`` is the "reference built another way": the network traced
with torch.fx and rewritten so that every ReLU *call* (a module called twice as in
ResNet blocks, an in-place module as in VGG, a functional F.relu as in DenseNet)
is its own fresh, non-in-place nn.ReLU module. On that net Captum's module hooks
see each call exactly once, so Captum's GuidedBackprop / Deconvolution are right
there whatever the original net does."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from schemas.registry import ModelEntry, load_registry
from workers.models.loading import LoadedModel, load_model
from workers.models.shapes_cnn import ShapesCNN

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TORCHVISION = ("alexnet", "vgg11", "resnet18", "resnet50")
MODELS = TORCHVISION + ("demo",)


def _entry(name: str, arch: str, size: int, **input_kw) -> ModelEntry:
    return ModelEntry(name=name, architecture=arch, num_classes=10, input={"size": [size, size], **input_kw})


@functools.cache
def get_model(name: str, size: int = 64) -> LoadedModel:
    """Seeded torchvision nets (weights=None, torch.manual_seed(0)) at size x size, or the demo
    model (its trained weights when workers/models/weights has them, else seeded ShapesCNN weights)."""
    if name == "demo":
        reg = load_registry()
        entry = reg.get("shapes-cnn")
        if entry.weights and reg.resolve(entry.weights).exists():
            return load_model(entry, reg)
        torch.manual_seed(0)
        return load_model(entry.model_copy(update={"weights": None, "labels_file": None}), module=ShapesCNN(10))
    torch.manual_seed(0)
    if name == "densenet_small":  # torchvision's DenseNet code (F.relu in forward), few layers
        net = torchvision.models.densenet.DenseNet(
            growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2, num_classes=10
        )
        return load_model(_entry(name, "torchvision.densenet", size, **IMAGENET), module=net)
    net = getattr(torchvision.models, name)(weights=None, num_classes=10)
    return load_model(_entry(name, f"torchvision.{name}", size, **IMAGENET), module=net)


def double(model: LoadedModel) -> LoadedModel:
    """A float64 copy: for tests of invariances (chunking, batching) that float32 rounding can
    break at ReLU/max-pool kinks (a pre-activation within 1e-7 of 0 flips with the batch
    composition, and the gradient of a piecewise-linear net jumps there)."""
    import dataclasses

    return dataclasses.replace(model, module=copy.deepcopy(model.module).double())


def batch(model: LoadedModel, n: int = 2, seed: int = 3) -> torch.Tensor:
    """n normalised inputs: seeded pixel images in [0, 1], normalised with the model's mean/std."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, model.channels, *model.input_size, generator=g)
    m, s = model.mean_std()
    return (img - m) / s


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a fraction of the reference's range."""
    assert a.shape == b.shape, (a.shape, b.shape)
    a, b = a.detach(), b.detach()
    rng = float(b.max() - b.min())
    return float((a - b).abs().max()) / (rng if rng > 0 else 1.0)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def one_relu_per_call(net: nn.Module) -> tuple[fx.GraphModule, int]:
    """(a copy of ``net`` with one fresh nn.ReLU(inplace=False) module per ReLU call, number of calls)."""
    gm = fx.symbolic_trace(copy.deepcopy(net))
    k = 0
    for node in list(gm.graph.nodes):
        if _is_relu(gm, node):
            name = f"fresh_relu_{k}"
            k += 1
            gm.add_module(name, nn.ReLU(inplace=False))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    return gm, k


@functools.cache
def reference_net(name: str) -> fx.GraphModule:
    return one_relu_per_call(get_model(name).module)[0]


# ---- tests of the references -----------------------------------------------------------------


@pytest.mark.parametrize("name,calls", [("alexnet", 7), ("vgg11", 10), ("resnet18", 17), ("resnet50", 49), ("demo", 5)])
def test_rewrite_has_one_fresh_relu_per_call_and_same_logits(name, calls):
    m = get_model(name)
    gm, k = one_relu_per_call(m.module)
    assert k == calls  # resnet18: stem 1 + 8 blocks x 2; resnet50: 1 + 16 x 3
    relus = [mod for mod in gm.modules() if isinstance(mod, nn.ReLU)]  # fresh ones and unused originals
    assert sum(1 for n, _ in gm.named_modules() if n.startswith("fresh_relu_")) == calls
    x = batch(m)
    with torch.no_grad():
        assert torch.equal(gm(x), m.module(x))
    # every ReLU module of the rewrite is called exactly once per forward
    counts = {}
    hs = [
        r.register_forward_hook(lambda mod, i, o: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1))
        for r in relus
    ]
    with torch.no_grad():
        gm(x)
    for h in hs:
        h.remove()
    fresh = {id(r) for n, r in gm.named_modules() if n.startswith("fresh_relu_")}
    assert set(counts) == fresh and set(counts.values()) == {1}  # the originals are never called
    assert all(not gm.get_submodule(f"fresh_relu_{i}").inplace for i in range(calls))


def test_rewrite_catches_functional_relus():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(F.relu(self.a(x)).relu() - 0.1))

    gm, k = one_relu_per_call(Functional())
    assert k == 3


# ---- the comparison table of docs/linearization.md ---------------------------------------------


def record(method: str, model: str, reference: str, diff: float) -> None:
    """Append one measured difference to $WHITEBOX_LIN_TABLE (JSON lines) when it is set."""
    import json
    import os

    path = os.environ.get("WHITEBOX_LIN_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"method": method, "model": model, "reference": reference, "diff": diff}) + "\n")


def table(path: str) -> str:
    """The markdown table (method x model -> max relative difference; worst per reference)."""
    import json

    rows: dict[tuple[str, str], dict[str, float]] = {}
    models: list[str] = []
    for line in open(path):
        r = json.loads(line)
        key = (r["method"], r["reference"])
        rows.setdefault(key, {})
        rows[key][r["model"]] = max(rows[key].get(r["model"], 0.0), r["diff"])
        if r["model"] not in models:
            models.append(r["model"])
    out = ["| method | reference | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for (method, ref), vals in rows.items():
        out.append(f"| {method} | {ref} | " + " | ".join(f"{vals[m]:.1e}" if m in vals else "" for m in models) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(table(sys.argv[1]))

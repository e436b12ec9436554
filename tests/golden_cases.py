"""The golden cases: every method (and the variants that take other code paths) on the demo
model, the binary star model and a seeded ResNet-18, sent through the real stack over HTTP.

``tests/golden/maps.json`` holds the platform it was recorded on (torch, its CPU kernel level and
the CPU: float results differ in the last bits from one CPU to another) and, per case, the SHA-256
of each returned float32 array and of the JSON body without timings and ids, plus a few statistics
of each array. ``tests/test_golden.py`` re-runs the cases and asserts bit-identity on the recorded
platform; on another platform it can only compare the statistics, within a tolerance.
Record anew (only in a commit that says why a map changed on purpose, or that the platform did)::

    .venv/bin/python -m tests.golden_cases --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "golden" / "maps.json"
RAW = {"outputs": ["array", "heatmap_png"], "normalize": "none"}

# (model, methods, extra request fields); each case is one request
EXPLAIN_CASES: list[tuple[str, list, dict]] = []


def _add(model: str, methods: list, **extra: Any) -> None:
    EXPLAIN_CASES.append((model, methods, {**RAW, **extra}))


for _m in ("shapes-cnn", "resnet18"):
    for _name in ("saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam", "cam", "fem"):
        _add(_m, [_name])
    _add(_m, [{"name": "gradcam", "params": {"layer": "features.7" if _m == "shapes-cnn" else "layer3"}}])
    _add(_m, [{"name": "fem", "params": {"k": 2.0}}])
    _add(_m, [{"name": "saliency", "params": {"smoothgrad": {"samples": 4, "noise_level": 0.2, "seed": 3}}}])
    _add(_m, [{"name": "guided_backprop", "params": {"smoothgrad": {"samples": 3, "seed": 1}}}])
    for _ig in (
        {},
        {"baseline": "blur"},
        {"baseline": "blur", "blur_sigma": 2.5},
        {"baseline": "white"},
        {"baseline": "uniform", "seed": 5},
        {"integration": "gausslegendre", "steps": 16},
        {"integration": "riemann_left", "steps": 12, "internal_batch_size": 5},
        {"integration": "riemann_middle", "steps": 8},
    ):
        _add(_m, [{"name": "integrated_gradients", "params": _ig}])
    _add(_m, [{"name": "smoothgrad", "params": {"samples": 5, "seed": 2}}])
    _add(
        _m,
        [{"name": "smoothgrad", "params": {"samples": 3, "base": "integrated_gradients", "base_params": {"steps": 8}}}],
    )
    _add(_m, [{"name": "smoothgrad", "params": {"samples": 3, "base": "guided_gradcam"}}])
    for _lrp in (
        {},
        {"rule": "zero"},
        {"rule": "gamma"},
        {"rule": "gamma", "gamma": 1.0},
        {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0},
        {"bias": False},
        {"composite": "epsilon_plus_flat"},
        {"composite": "epsilon_gamma_box"},
        {"composite": "epsilon_alpha2_beta1"},
    ):
        _add(_m, [{"name": "lrp", "params": _lrp}])
    _add(_m, [{"name": "deep_taylor"}])
    _add(_m, [{"name": "deep_taylor", "params": {"input_rule": "wsquare"}}])
    for _dl in (
        {},
        {"rule": "reveal_cancel"},
        {"baseline": "blur"},
        {"baseline": "uniform", "seed": 4},
        {"baseline": "white", "precision": "float32"},
        {"rule": "reveal_cancel", "precision": "float32"},
    ):
        _add(_m, [{"name": "deeplift", "params": _dl}])
    for _adv in (
        {},
        {"attack": "pgd", "steps": 3},
        {"attack": "pgd", "steps": 2, "random_start": True, "seed": 1},
        {"attack": "deepfool", "max_iter": 10},
        {"attack": "fgsm", "loss": "cross_entropy"},
        {"attack": "one_pixel", "population": 8, "iterations": 2, "seed": 0},
    ):
        _add(_m, [{"name": "adversarial", "params": _adv}])
    for _occ in ({}, {"fill": "blur"}, {"fill": "mean", "window": 12, "stride": 6}, {"fill": "black"}):
        _add(_m, [{"name": "occlusion", "params": _occ}])
    _add(_m, [{"name": "lime", "params": {"samples": 60, "seed": 1}}])
    _add(_m, [{"name": "lime", "params": {"samples": 40, "segments": 20, "fill": "blur", "seed": 2}}])
    _add(_m, [{"name": "meaningful_perturbation", "params": {"iterations": 8, "seed": 0}}])
    _add(_m, [{"name": "meaningful_perturbation", "params": {"variant": "extremal", "iterations": 6, "seed": 0}}])
    # one request, many methods: the fused pass next to attribute()
    _add(
        _m,
        [
            "saliency",
            "gradcam",
            "guided_backprop",
            "guided_gradcam",
            "deconvnet",
            "fem",
            *(["cam"] if _m == "resnet18" else []),
            {"name": "lrp", "params": {"rule": "epsilon"}},
        ],
    )
    # the response as a client sees it by default, and the other renderings
    EXPLAIN_CASES.append((_m, ["gradcam", "integrated_gradients", "lrp"], {}))
    EXPLAIN_CASES.append(
        (
            _m,
            ["saliency", "deeplift"],
            {
                "outputs": ["array", "heatmap_png", "overlay_png", "mask_png"],
                "normalize": "abs_max",
                "colormap": "hot",
                "reduce": "sum",
                "top_k": 3,
                "target": 1,
            },
        )
    )
    EXPLAIN_CASES.append(
        (_m, ["guided_backprop"], {"outputs": ["array", "overlay_png"], "reduce": "none", "colormap": "viridis"})
    )
_add("shapes-star", ["adversarial_generators"])
_add("shapes-star", [{"name": "adversarial_generators", "params": {}}, "gradcam"], target="star")

EVAL_CASES: list[tuple[str, dict]] = [
    (
        "/v1/evaluate",
        {
            "model": "shapes-cnn",
            "methods": [
                "saliency",
                "gradcam",
                {
                    "name": "smoothgrad",
                    "params": {"samples": 3, "base": "integrated_gradients", "base_params": {"steps": 8}},
                },
            ],
            "metrics": ["sparseness", "pointing_game", "relevance_mass_accuracy", "deletion_auc"],
            "ground_truth": {"box": [10, 10, 40, 40]},
        },
    ),
    ("/v1/compare", {"model": "shapes-cnn", "methods": ["gradcam", "fem"]}),
]


# Tolerance of the statistics on another platform, relative to the array's abs max (and, for the sum,
# its size). Meaningful perturbation optimises a mask with Adam: last-bit differences of another CPU
# grow along its iterations (measured: 0.8 % of abs_max x size on the extremal case).
TOLERANCE = 1e-4
TOLERANCE_BY_METHOD = {"meaningful_perturbation": 2e-2}


def platform() -> dict[str, str]:
    """What decides the last bits of a float result here: torch, its CPU kernels and the CPU."""
    import torch

    cpu: dict[str, str] = {}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        first = ""
    for line in first.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("vendor_id", "cpu family", "model", "model name", "stepping"):
            cpu[key] = value
        elif key == "flags":
            cpu["flags_sha256"] = _sha(value.encode())[:16]
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), **cpu}


def tolerance(request: dict) -> float:
    names = [m if isinstance(m, str) else m["name"] for m in request.get("methods", [])]
    return max([TOLERANCE, *(TOLERANCE_BY_METHOD.get(n, TOLERANCE) for n in names)])


def statistics_differ(got: dict, want: dict, tol: float) -> list[str]:
    """How the arrays of ``got`` differ from ``want`` beyond ``tol`` (empty: within it)."""
    if got["status"] != want["status"] or len(got["arrays"]) != len(want["arrays"]):
        return [f"status {got['status']} vs {want['status']}, {len(got['arrays'])} vs {len(want['arrays'])} arrays"]
    out = []
    for i, (g, w) in enumerate(zip(got["arrays"], want["arrays"])):
        scale = max(w["abs_max"], 1e-30)
        size = int(np.prod(w["shape"]))
        if g["shape"] != w["shape"]:
            out.append(f"array {i}: shape {g['shape']} vs {w['shape']}")
        elif abs(g["abs_max"] - w["abs_max"]) > tol * scale or abs(g["sum"] - w["sum"]) > tol * scale * size:
            out.append(
                f"array {i}: abs_max {g['abs_max']:.7g} vs {w['abs_max']:.7g}, sum {g['sum']:.7g} vs {w['sum']:.7g}"
            )
        elif (d := float(np.abs(np.subtract(g["blocks"], w["blocks"])).max(initial=0.0))) > tol * scale:
            out.append(f"array {i}: a block mean differs by {d / scale:.2g} of abs_max (tolerance {tol:g})")
    return out


def load() -> dict:
    """The recording: ``{"platform": ..., "cases": {case id: record}}``."""
    return json.loads(GOLDEN.read_text())


def case_id(i: int, kind: str = "explain") -> str:
    return f"{kind}-{i:03d}"


def images() -> dict[str, str]:
    """The input image per model (fixed bytes), as base64 PNG: a shapes image at the model's size
    and, for the ResNet, the same image at 80x72 so that maps are resized to the client's size."""
    from tests.helpers import png_b64
    from workers.training.shapes import generate

    imgs, _, _ = generate(2, seed=777)
    star = imgs[1]
    wide = np.asarray(Image.fromarray(imgs[0]).resize((80, 72), Image.BILINEAR))
    return {"shapes-cnn": png_b64(imgs[0]), "shapes-star": png_b64(star), "resnet18": png_b64(wide)}


def write_registry(tmp: Path) -> Path:
    """shapes-cnn and shapes-star from the bundled registry, and a ResNet-18 seeded with 0 at 64x64."""
    import torch
    import torchvision
    import yaml
    from safetensors.torch import save_file

    from schemas.registry import load_registry

    reg = load_registry()
    models = []
    for name in ("shapes-cnn", "shapes-star"):
        e = reg.get(name).model_dump(exclude_none=True)
        for key in ("weights", "labels_file"):
            if key in e:
                e[key] = str(reg.resolve(e[key]))
        models.append(e)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "resnet18.safetensors"))
    models.append(
        {
            "name": "resnet18",
            "architecture": "torchvision.resnet18",
            "weights": "resnet18.safetensors",
            "num_classes": 10,
            "input": {"size": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }
    )
    path = tmp / "golden-registry.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


_VOLATILE = {"id", "timings", "compute_ms"}


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if k not in _VOLATILE}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _arrays(body: Any) -> list[np.ndarray]:
    """Every float32 array of a body, in document order."""
    import base64

    out: list[np.ndarray] = []
    if isinstance(body, dict):
        if set(body) >= {"shape", "data", "dtype"}:
            return [np.frombuffer(base64.b64decode(body["data"]), dtype="<f4").reshape(body["shape"])]
        for v in body.values():
            out += _arrays(v)
    elif isinstance(body, list):
        for v in body:
            out += _arrays(v)
    return out


def blocks(a: np.ndarray, n: int = 8) -> list[list[float]]:
    """The map as n x n block means (over channels and the blocks of its last two axes)."""
    if a.ndim < 2 or not a.size:
        return []
    m = a.astype(np.float64).reshape(-1, *a.shape[-2:]).mean(axis=0)
    rows = np.array_split(np.arange(m.shape[0]), min(n, m.shape[0]))
    cols = np.array_split(np.arange(m.shape[1]), min(n, m.shape[1]))
    return [[float(f"{m[np.ix_(r, c)].mean():.9g}") for c in cols] for r in rows]


def record(status: int, body: Any) -> dict:
    arrays = _arrays(body)
    return {
        "status": status,
        "body_sha256": _sha(json.dumps(_strip(body), sort_keys=True).encode()),
        "arrays": [
            {
                "sha256": _sha(np.ascontiguousarray(a).tobytes()),
                "shape": list(a.shape),
                "sum": float(a.astype(np.float64).sum()),
                "abs_max": float(np.abs(a).max()) if a.size else 0.0,
                "blocks": blocks(a),
            }
            for a in arrays
        ],
    }


def run_all(url: str) -> dict[str, dict]:
    import httpx

    imgs = images()
    out: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=600) as c:
        for i, (model, methods, extra) in enumerate(EXPLAIN_CASES):
            req = {"model": model, "image": imgs[model], "methods": methods, **extra}
            r = c.post("/v1/explain", json=req)
            out[case_id(i)] = {
                "request": {k: v for k, v in req.items() if k != "image"},
                **record(r.status_code, r.json()),
            }
        for i, (route, req) in enumerate(EVAL_CASES):
            body = dict(req)
            if route == "/v1/evaluate":
                body["images"] = [imgs["shapes-cnn"], imgs["resnet18"]]
            else:
                body["image"] = imgs["shapes-cnn"]
            r = c.post(route, json=body)
            out[case_id(i, "eval")] = {"request": {"route": route, **req}, **record(r.status_code, r.json())}
    return out


class GoldenStack:
    """The test stack (tests.conftest.Stack) on the golden registry: one worker on one thread, so that
    every request runs alone (batch of one) with the same arithmetic each time."""

    def __new__(cls, tmp: Path):
        from tests.conftest import Stack

        return Stack(tmp, registry=write_registry(tmp))


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"record {GOLDEN.name} anew")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = GoldenStack(Path(tmp))
        try:
            got = run_all(stack.url)
        finally:
            stack.stop()
    refused = {k: v["status"] for k, v in got.items() if v["status"] != 200}
    if refused:
        print("cases answered with a problem (recorded as such):", refused, file=sys.stderr)
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"platform": platform(), "cases": got}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(got)} cases to {GOLDEN}")
    else:
        old = load()["cases"]
        diff = [k for k in got if old.get(k, {}).get("body_sha256") != got[k]["body_sha256"]]
        print(f"{len(got) - len(diff)}/{len(got)} cases unchanged; changed: {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

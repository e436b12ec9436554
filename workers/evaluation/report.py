"""The benchmark command (``whitebox report``): every explanation method on one model and a set of
images, scored with the evaluation metrics, written as a report folder.

    python -m workers.evaluation.report --model shapes-cnn --images generated --n 8 --out reports/shapes
    python -m workers.evaluation.report --model clever-hans-cnn --images clever-hans --n 8 --out reports/ch

``--images``: ``generated`` (the shapes data set, ``workers/training/shapes.py``; its object masks are the
ground truth), ``clever-hans`` (the same with the Clever-Hans watermark; the object masks are the
ground truth and the relevance mass on the watermark is reported beside it) or a folder of PNG/JPEG
images (ground-truth masks, if any, in ``DIR/masks/<stem>.png``). Methods default to every method of
``workers.explain.IMPLEMENTATIONS`` that applies to the model; the explainers run in-process.

The folder gets ``report.md`` (method x metric table, mean ± sd over the images, time per image),
``results.json`` (every per-image value), ``maps.png`` (the survey's Fig. 9 layout: the image, then
each method's map over it in the jet colour map with a colour bar), ``metrics.png`` (one panel per
metric: mean ± sd per method) and, with ``model_randomisation``, ``sanity.png`` (the cascading
randomisation curves).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from schemas import display
from schemas.methods import map_is_signed
from schemas.metrics import METRICS
from schemas.registry import Registry, load_registry
from workers.errors import ExplainError
from workers.evaluation import metrics as M
from workers.evaluation.common import map_fn, to_numpy
from workers.evaluation.evaluate import _clean, evaluate_method, ground_truth_mask
from workers.evaluation.sanity import cascading_randomisation
from workers.explain import applicability
from workers.explain.base import Progress
from workers.explain.postprocess import display_map
from workers.models.loading import LoadedModel, load_model
from workers.training import clever_hans, shapes

FAMILY_ORDER = ("localisation", "similarity", "complexity", "faithfulness", "robustness", "sanity", "cost")
FAMILY_TITLES = {
    "localisation": "Localisation (vs the ground-truth mask)",
    "similarity": "Similarity to the ground truth",
    "complexity": "Complexity",
    "faithfulness": "Faithfulness",
    "robustness": "Robustness",
    "sanity": "Sanity (cascading model-parameter randomisation)",
    "cost": "Cost",
}
EXTRA_COLUMN_DOCS = {
    "watermark": "share of the positive relevance on the 6 x 6 watermark (0.9 % of the image)",
    "watermark_area": "share of the positive relevance within 4 px of the watermark (12 x 12 px in the corner, 3.5 % "
    "of the image): the region a coarse map can point at (a Grad-CAM cell of ShapesCNN is 8 x 8 px)",
}

DEFAULT_METRICS = (
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "iou_gt",
    "sparseness",
    "deletion_auc",
    "insertion_auc",
    "faithfulness_correlation",
    "robustness_fgsm",
    "max_sensitivity",
    "model_randomisation",
    "time_ms",
)
# cheaper settings than the API defaults, so that a bench over every method runs in minutes on a CPU
BENCH_METRIC_PARAMS = {"max_sensitivity": {"samples": 5}, "faithfulness_correlation": {"runs": 50}}


# ---- model and images ---------------------------------------------------------------------------
def find_model(name: str, registry: str | None = None) -> tuple[Registry, int]:
    """The registry holding model ``name``: ``registry`` if given, else the default one."""
    paths = [Path(registry)] if registry else [None]
    for p in paths:
        reg = load_registry(p)
        for i, m in enumerate(reg.models):
            if m.name == name:
                return reg, i
    raise SystemExit(f"model {name!r} not found in {registry or 'the bundled registries'}")


def load_images(spec: str, n: int, seed: int) -> dict:
    """{"images": [PIL], "names": [...], "labels": array | None, "masks": [bool array | None],
    "extra_masks": {name: [bool array]}} at the images' own size."""
    if spec in ("generated", "clever-hans"):
        if spec == "generated":
            imgs, labels, masks = shapes.generate(n, seed)
            extra = {}
        else:
            imgs, labels, masks, wm = clever_hans.data(n, seed, "watermark")
            extra = {"watermark": list(wm), "watermark_area": [clever_hans.watermark_area()] * n}
        return {
            "images": [Image.fromarray(a) for a in imgs],
            "names": [f"{spec}-{seed}-{i}" for i in range(n)],
            "labels": labels,
            "masks": list(masks),
            "extra_masks": extra,
        }
    folder = Path(spec)
    if not folder.is_dir():
        raise SystemExit(f"--images {spec!r}: not 'generated', 'clever-hans' or a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    if not files:
        raise SystemExit(f"no PNG/JPEG images in {folder}")
    masks = []
    for f in files:
        mp = folder / "masks" / (f.stem + ".png")
        masks.append(np.asarray(Image.open(mp).convert("L")) > 0 if mp.exists() else None)
    return {
        "images": [Image.open(f).convert("RGB") for f in files],
        "names": [f.name for f in files],
        "labels": None,
        "masks": masks,
        "extra_masks": {},
    }


def default_methods(model: LoadedModel) -> tuple[list[str], dict[str, str]]:
    """Every implemented method that applies to the model, and the reasons of those that do not."""
    app = applicability(model)
    return [k for k, v in app.items() if v is None], {k: v for k, v in app.items() if v is not None}


# ---- statistics and report --------------------------------------------------------------------------
def flatten(values: dict[str, list]) -> dict[str, list[float]]:
    """{metric: [per-image value or {output: v}]} -> {column: [float]} with ``metric.output`` columns."""
    out: dict[str, list[float]] = {}
    for k, vs in values.items():
        if vs and isinstance(vs[0], dict):
            for o in vs[0]:
                out[f"{k}.{o}"] = [np.nan if v[o] is None else v[o] for v in vs]
        else:
            out[k] = [np.nan if v is None else v for v in vs]
    return out


def mean_sd(vs: list[float]) -> tuple[float, float, int]:
    a = np.asarray(vs, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size)


def _fmt(m: float, s: float, col: str) -> str:
    if math.isnan(m):
        return "–"
    if col == "time_ms":  # measured over the whole batch: one number per method
        return f"{m:.1f}" if s == 0 else f"{m:.1f} ± {s:.1f}"
    return f"{m:.3f} ± {s:.3f}"


def write_report(out: Path, header: dict, table: dict[str, dict[str, list[float]]], skipped: dict[str, str]) -> str:
    cols: list[str] = []
    for vals in table.values():
        cols += [c for c in vals if c not in cols]
    lines = [
        f"# Evaluation report: {header['model']} on {header['images']}",
        "",
        f"Command: `{header['command']}`",
        "",
        f"{header['n']} images, target = {header['target']}; each cell is the mean ± sd over the images "
        f"(sd with ddof 1; '–': undefined on every image). `time_ms`: the method's time on the whole "
        f"batch divided by the number of images, on this machine ({header['device']}, {header['threads']} "
        f"torch threads; shared CPUs make it noisy).",
        "",
    ]
    for k, v in header.get("notes", {}).items():
        lines.append(f"- {k}: {v}")
    if header.get("notes"):
        lines.append("")
    families: dict[str, list[str]] = {}
    for c in cols:
        base = c.split(".")[0]
        families.setdefault(METRICS[base].family if base in METRICS else "localisation", []).append(c)
    for fam in FAMILY_ORDER:
        if fam not in families:
            continue
        fc = families[fam]
        lines += [f"### {FAMILY_TITLES[fam]}", "", "| method | " + " | ".join(fc) + " |", "|---|" + "---|" * len(fc)]
        for meth, vals in table.items():
            lines.append(
                f"| {meth} | " + " | ".join(_fmt(*mean_sd(vals[c])[:2], c) if c in vals else "" for c in fc) + " |"
            )
        lines.append("")
    lines += ["Metrics (definitions and references: `schemas/metrics.py`, docs/evaluation.md):", ""]
    seen = set()
    for c in cols:
        base = c.split(".")[0]
        if base in seen:
            continue
        seen.add(base)
        spec = METRICS.get(base)
        better = (
            ""
            if spec is None or spec.higher_is_better is None
            else (" (higher is better)" if spec.higher_is_better else " (lower is better)")
        )
        desc = header.get("extra_columns", {}).get(c) or (spec.summary if spec else "")
        lines.append(f"- `{base}`{better}: {desc}; {spec.reference}" if spec else f"- `{c}`: {desc}")
    if skipped:
        lines += ["", "Methods not run:", ""] + [f"- `{k}`: {v}" for k, v in skipped.items()]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


# ---- figures -------------------------------------------------------------------------------------------
def figure_maps(
    path: Path,
    images: list[Image.Image],
    maps: dict[str, np.ndarray],
    rows: int = 3,
    per_row: int = 8,
    signed_maps: dict[str, bool] | None = None,
) -> None:
    """The survey's Fig. 9 layout: per image the image, then each method's map over it with a colour
    bar, drawn as the service draws it (``display_map``: unsigned maps min-max in jet, signed ones
    centred on zero in a diverging map); wrapped after ``per_row`` panels."""
    rows = min(rows, len(images))
    methods = list(maps)
    panels = 1 + len(methods)
    ncol = min(per_row, panels)
    lines = math.ceil(panels / ncol)
    fig = Figure(figsize=(1.9 * ncol, 1.75 * rows * lines))
    axes = fig.subplots(rows * lines, ncol, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        img = np.asarray(images[r].convert("RGB"))
        for k in range(panels):
            ax = axes[r * lines + k // ncol, k % ncol]
            ax.imshow(img)
            if k == 0:
                ax.set_title("image", fontsize=7)
                continue
            meth = methods[k - 1]
            signed = bool(signed_maps and signed_maps.get(meth))
            a = np.asarray(maps[meth][r], dtype=np.float32)
            raw = torch.as_tensor(a.reshape(-1, *a.shape[-2:]))
            d, _, _ = display_map(raw, display.SIGNED_NORMALIZE if signed else display.UNSIGNED_NORMALIZE, signed)
            m = d.numpy()
            if m.shape != img.shape[:2]:
                m = np.asarray(Image.fromarray(m.astype(np.float32)).resize(img.shape[1::-1], Image.BILINEAR))
            cmap = display.SIGNED_COLORMAP if signed else display.UNSIGNED_COLORMAP
            im = ax.imshow(m, cmap=cmap, alpha=0.5, vmin=0, vmax=1)  # signed: zero at the centre colour
            ax.set_title(meth, fontsize=7)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
            cb.ax.tick_params(labelsize=5)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100)


def figure_metrics(path: Path, table: dict[str, dict[str, list[float]]]) -> None:
    """One panel per column: mean ± sd per method (time on a log scale)."""
    cols: list[str] = []
    for vals in table.values():
        cols += [c for c in vals if c not in cols]
    methods = list(table)
    ncol = 4
    nrow = math.ceil(len(cols) / ncol)
    fig = Figure(figsize=(3.2 * ncol, 0.22 * len(methods) * nrow + 1.2 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    cmap = colormaps["tab20"]
    for k, c in enumerate(cols):
        ax = axes[k // ncol, k % ncol]
        stats = [mean_sd(table[m].get(c, [])) for m in methods]
        ms = [s[0] for s in stats]
        sd = [s[1] for s in stats]
        y = np.arange(len(methods))
        ax.barh(
            y,
            [0 if math.isnan(v) else v for v in ms],
            xerr=[0 if math.isnan(v) else v for v in sd],
            color=[cmap(i % 20) for i in range(len(methods))],
            error_kw={"lw": 0.7},
        )
        ax.set_yticks(y)
        ax.set_yticklabels(methods if k % ncol == 0 else [""] * len(methods), fontsize=7)
        ax.invert_yaxis()
        fam = METRICS[c.split(".")[0]].family if c.split(".")[0] in METRICS else "ground truth"
        ax.set_title(f"{c} ({fam})", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
        if c == "time_ms" and all(v > 0 for v in ms if not math.isnan(v)):
            ax.set_xscale("log")
    for k in range(len(cols), nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    fig.tight_layout(pad=0.4)
    fig.savefig(path, dpi=110)


def figure_sanity(path: Path, curves: dict[str, dict]) -> None:
    """Cascading randomisation: Spearman and SSIM (mean over images) vs the layers randomised."""
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab20"]
    for i, (meth, r) in enumerate(curves.items()):
        for ax, key in zip(axes, ("spearman", "ssim")):
            y = np.concatenate([[1.0], np.nanmean(r[key], axis=1) if r[key].size else []])
            ax.plot(range(len(y)), y, marker="o", ms=3, lw=1, color=cmap(i % 20), label=meth)
    for ax, key in zip(axes, ("Spearman rank correlation (|map|)", "SSIM ([0,1] |map|)")):
        names = next(iter(curves.values()))["layers"] if curves else []
        ax.set_xticks(range(len(names) + 1))
        ax.set_xticklabels(["trained"] + list(names), rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(key, fontsize=8)
        ax.set_xlabel("cascading randomisation from the top layer", fontsize=8)
        ax.axhline(0, color="gray", lw=0.5)
    axes[1].legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout(pad=0.4)
    fig.savefig(path, dpi=110)


# ---- the command -----------------------------------------------------------------------------------
def _parse_methods(items: list[str] | None) -> list[tuple[str, dict]] | None:
    """``name`` or ``name:{json params}``; comma- or space-separated."""
    if not items:
        return None
    out = []
    for it in items:
        for part in [it] if ":" in it else it.split(","):
            if not part:
                continue
            name, _, params = part.partition(":")
            out.append((name, json.loads(params) if params else {}))
    return out


def _load(args: argparse.Namespace) -> tuple[LoadedModel, dict, torch.Tensor]:
    """The model, the images ({"images", "names", "labels", "masks", "extra_masks"}) and the batch."""
    reg, idx = find_model(args.model, args.registry)
    entry = reg.models[idx]
    if entry.weights and not reg.resolve(entry.weights).exists():
        raise SystemExit(
            f"weights of {entry.name!r} not found at {reg.resolve(entry.weights)} "
            "(train it first: python -m workers.training.demo_model)"
        )
    model = load_model(entry, reg)
    data = load_images(args.images, args.n, args.seed)
    return model, data, model.preprocess(data["images"])


def _ground_truth(model: LoadedModel, data: dict) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The object masks (None unless every image has one) and the extra masks, at the model's size."""
    hw = model.input_size
    size_of = [im.size for im in data["images"]]
    gt = None
    if all(m is not None for m in data["masks"]):
        gt = np.stack([ground_truth_mask(m, s, hw) for m, s in zip(data["masks"], size_of)])
    extra = {
        k: np.stack([ground_truth_mask(m, s, hw) for m, s in zip(v, size_of)]) for k, v in data["extra_masks"].items()
    }
    return gt, extra


def _notes(args: argparse.Namespace, model: LoadedModel, data: dict, pred: torch.Tensor, n: int) -> dict[str, str]:
    notes = {}
    if data["labels"] is not None:
        notes["accuracy on these images"] = f"{float((pred.numpy() == data['labels']).mean()):.3f}"
    if args.images == "clever-hans":
        for cond in ("removed", "swapped"):
            xi, yi, _, _ = clever_hans.data(n, args.seed, cond)
            with torch.no_grad():
                p = model.module(model.preprocess([Image.fromarray(a) for a in xi])).argmax(1).numpy()
            notes[f"accuracy with the watermark {cond}"] = f"{float((p == yi).mean()):.3f}"
    return notes


def _metric_names(args: argparse.Namespace, has_gt: bool, notes: dict[str, str]) -> list[str]:
    names = [m for m in (args.metrics.split(",") if args.metrics else DEFAULT_METRICS) if m]
    for m in names:
        if m not in METRICS:
            raise SystemExit(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
    if not has_gt:
        dropped = [m for m in names if METRICS[m].needs_ground_truth]
        names = [m for m in names if not METRICS[m].needs_ground_truth]
        if dropped:
            notes["no ground truth"] = "skipped " + ", ".join(dropped)
    return names


def _randomisation_values(r: dict, n: int) -> list[dict[str, float]]:
    def mean(col: np.ndarray) -> float:
        return float(np.nanmean(col)) if np.isfinite(col).any() else math.nan

    return [
        {
            "spearman": mean(r["spearman"][:, i]),
            "ssim": mean(r["ssim"][:, i]),
            "spearman_last": float(r["spearman"][-1, i]),
            "ssim_last": float(r["ssim"][-1, i]),
        }
        for i in range(n)
    ]


def _extra_columns(flat: dict, mnp: np.ndarray, extra_gt: dict, has_gt: bool, docs: dict[str, str]) -> dict:
    """The relevance mass on each extra mask (the watermark), beside the mass on the object."""
    for k, mk in extra_gt.items():
        col = f"mass_{k}"
        flat[col] = [M.relevance_mass_accuracy(np.clip(mnp[i], 0, None), mk[i]) for i in range(len(mnp))]
        docs[col] = EXTRA_COLUMN_DOCS.get(
            k, f"share of the positive relevance on the {k} (relevance mass accuracy with the {k} as ground truth)"
        )
    if extra_gt and has_gt:
        flat["mass_object"] = flat.get("relevance_mass_accuracy")
        flat.pop("relevance_mass_accuracy", None)
        docs["mass_object"] = "share of the positive relevance on the object (relevance_mass_accuracy)"
        flat = {k: v for k, v in flat.items() if v is not None}
    return flat


class _Bench:
    """What the methods' runs fill in: the table, per-image values, figure maps and sanity curves."""

    def __init__(self) -> None:
        self.table: dict[str, dict[str, list[float]]] = {}
        self.per_image: dict[str, dict] = {}
        self.maps_fig: dict[str, np.ndarray] = {}
        self.signed: dict[str, bool] = {}
        self.curves: dict[str, dict] = {}
        self.extra_cols: dict[str, str] = {}
        self.skipped: dict[str, str] = {}


def _run_method(bench: _Bench, ctx: dict, label: str, name: str, params: dict) -> None:
    """One method: its metric values (and cascading randomisation) into ``bench``; a failure is skipped."""
    model, x, targets, args = ctx["model"], ctx["x"], ctx["targets"], ctx["args"]
    try:
        vals, maps = evaluate_method(model, x, targets, name, params, ctx["calls"], ctx["gt"], Progress())
        mnp = to_numpy(maps)
        if ctx["randomise"] is not None:
            sp = ctx["randomise"]
            r = cascading_randomisation(
                model, x, targets, map_fn(name, params), maps, sp.get("layers"), sp.get("seed", 42)
            )
            bench.curves[label] = r
            vals["model_randomisation"] = _randomisation_values(r, x.shape[0])
    except (ExplainError, RuntimeError, ValueError) as e:
        bench.skipped[label] = f"failed: {getattr(e, 'detail', None) or e}"
        print(f"    skipped: {bench.skipped[label]}", file=sys.stderr)
        return
    flat = _extra_columns(flatten(vals), mnp, ctx["extra_gt"], ctx["gt"] is not None, bench.extra_cols)
    bench.table[label] = flat
    bench.per_image[label] = {k: [_clean(float(v)) for v in vs] for k, vs in flat.items()}
    bench.maps_fig[label] = mnp[: args.figure_rows]
    bench.signed[label] = map_is_signed(name, params)


def _write(args: argparse.Namespace, ctx: dict, bench: _Bench, data: dict, notes: dict) -> str:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "model": ctx["model"].name,
        "images": args.images,
        "n": ctx["x"].shape[0],
        "target": args.target,
        "command": "python -m workers.evaluation.report " + " ".join(args.argv),
        "device": str(ctx["model"].device),
        "threads": args.threads,
        "notes": notes,
        "extra_columns": bench.extra_cols,
    }
    report = write_report(out, header, bench.table, bench.skipped)
    results = {
        "header": header,
        "images": data["names"],
        "targets": ctx["targets"].tolist(),
        "per_image": bench.per_image,
        "skipped": bench.skipped,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if not args.no_figures and bench.table:
        figure_maps(out / "maps.png", data["images"], bench.maps_fig, args.figure_rows, signed_maps=bench.signed)
        figure_metrics(out / "metrics.png", bench.table)
        if bench.curves:
            figure_sanity(out / "sanity.png", bench.curves)
    return report


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, data, x = _load(args)
    gt, extra_gt = _ground_truth(model, data)
    with torch.no_grad():
        pred = model.module(x).argmax(1).cpu()
    targets = pred if args.target == "predicted" else torch.as_tensor(data["labels"], dtype=torch.long)
    notes = _notes(args, model, data, pred, x.shape[0])
    bench = _Bench()
    methods = _parse_methods(args.methods)
    if methods is None:
        names, bench.skipped = default_methods(model)
        methods = [(k, {}) for k in names if k not in (args.exclude or [])]
    metric_names = _metric_names(args, gt is not None, notes)
    mparams = {**BENCH_METRIC_PARAMS, **(json.loads(args.metric_params) if args.metric_params else {})}
    ctx = {
        "args": args,
        "model": model,
        "x": x,
        "targets": targets,
        "gt": gt,
        "extra_gt": extra_gt,
        "calls": [(m, mparams.get(m, {})) for m in metric_names if m != "model_randomisation"],
        "randomise": mparams.get("model_randomisation", {}) if "model_randomisation" in metric_names else None,
    }
    t_all = time.perf_counter()
    for j, (name, params) in enumerate(methods):
        label = name if not params else f"{name} {json.dumps(params, sort_keys=True)}"
        t0 = time.perf_counter()
        print(f"[{j + 1}/{len(methods)}] {label} ...", file=sys.stderr, flush=True)
        _run_method(bench, ctx, label, name, params)
        if label in bench.table:
            print(f"    {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    report = _write(args, ctx, bench, data, notes)
    print(f"wrote {Path(args.out)} ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
    return {"report": report, "table": bench.table, "skipped": bench.skipped, "out": Path(args.out)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="whitebox report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", required=True, help="registry model name (default registry, or --registry)")
    ap.add_argument("--registry", help="registry YAML (default: the bundled ones, workers/models/registry/*.yaml)")
    ap.add_argument("--images", default="generated", help="generated | clever-hans | a folder of images")
    ap.add_argument("--n", type=int, default=8, help="number of images")
    ap.add_argument("--seed", type=int, default=3, help="data seed of generated images")
    ap.add_argument(
        "--methods",
        nargs="*",
        help="method names (default: every method that applies); name:{json params} for parameters",
    )
    ap.add_argument("--exclude", nargs="*", help="methods to leave out of the default list")
    ap.add_argument("--metrics", help=f"comma-separated metric names (default: {','.join(DEFAULT_METRICS)})")
    ap.add_argument(
        "--metric-params", help='JSON {"metric": {params}} (report defaults: ' + json.dumps(BENCH_METRIC_PARAMS) + ")"
    )
    ap.add_argument(
        "--target",
        choices=["predicted", "label"],
        default="predicted",
        help="explain the predicted class or the true label (generated images)",
    )
    ap.add_argument("--out", default="reports/report")
    ap.add_argument("--figure-rows", type=int, default=3, help="images shown in maps.png")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-figures", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m benchmarks`` (``make bench``): the speed benchmark of issue 7.

Suites (``--suites``, comma-separated; default all):
  methods   per method, ours vs Captum / Zennit, and the physical floor, per model and batch
  multi     the six-method request fused vs the separate calls
  tuning    worker batch-size sweep (run_batch) and the IG / SmoothGrad chunk size
  e2e       HTTP load against a real stack, batching on and off

The full run (4 models x 2 batch sizes x every method, occlusion 16/8 and LIME 500 at
224x224) takes hours on two CPU cores; ``--quick`` keeps the light methods, 3 runs,
occlusion 32/16 and short load levels. Results: JSON (``--json``) and Markdown (``--md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import common


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="demo,resnet18,resnet50,vgg16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--size", type=int, default=224, help="input side of the torchvision models")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the same for ours and the references)")
    ap.add_argument("--suites", default="methods,multi,tuning,e2e")
    ap.add_argument("--methods", default="", help="only these method labels (substring match), e.g. saliency,lrp")
    ap.add_argument("--skip", default="", help="leave out these method labels (substring match), e.g. occlusion,lime")
    ap.add_argument("--quick", action="store_true", help="light methods, 3 runs, occlusion 32/16, short load")
    ap.add_argument("--occlusion", default="16/8", help="window/stride of the occlusion case")
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds per measurement before stopping early (>= 3 runs)"
    )
    ap.add_argument("--e2e-models", default="shapes-cnn,resnet18")
    ap.add_argument("--e2e-size", type=int, default=224)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--e2e-requests", type=int, default=64, help="requests per load level (at least 2 x concurrency)")
    ap.add_argument("--json", default="benchmarks/results/latest.json")
    ap.add_argument("--md", default="benchmarks/results/latest.md")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.quick:
        args.runs = min(args.runs, 3)
        if args.occlusion == "16/8":
            args.occlusion = "32/16"
    suites = set(args.suites.split(","))
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    win, stride = (int(v) for v in args.occlusion.split("/"))
    only = [s for s in args.methods.split(",") if s]
    skip = [s for s in args.skip.split(",") if s]
    machine = common.machine()
    print(f"# {machine}", flush=True)
    rows: list[dict] = []
    t_start = time.perf_counter()

    from benchmarks.methods import cases, run_cases, run_multi

    for name in models:
        if not ({"methods", "multi"} & suites or ("tuning" in suites and name in ("demo", "resnet18"))):
            continue
        model = common.build_model(name, args.size)
        for b in batches:
            x, t = common.inputs(model, b)
            if "methods" in suites:
                print(f"## {model.name} batch {b} {tuple(x.shape)}", flush=True)
                sel = [
                    c
                    for c in cases(win, stride)
                    if (not only or any(o in c.label for o in only))
                    and not any(k in c.label for k in skip)
                    and not (args.quick and (c.heavy or (b > 1 and not c.batch8)))
                ]
                rows += run_cases(model, x, t, sel, args.runs, budget_s=args.budget)
            if "multi" in suites:
                print(f"## six-method request, {model.name} batch {b}", flush=True)
                rows += run_multi(model, x, t, args.runs)
        if "tuning" in suites and name in ("demo", "resnet18"):
            from benchmarks.tuning import batch_sweep, chunk_sweep

            print(f"## tuning {model.name}", flush=True)
            sizes = [1, 2, 4, 8, 16, 32] if name == "demo" else [1, 2, 4, 8]
            rows += batch_sweep(model, sizes, ["saliency", "gradcam", "fem"], args.runs)
            if name == "resnet18":
                x, t = common.inputs(model, 1)
                rows += chunk_sweep(model, x, t, "integrated_gradients", [4, 8, 16, 32, 64], 3)
        _save(rows, machine, args)

    if "e2e" in suites:
        from benchmarks.e2e import run_e2e

        print("## end to end", flush=True)
        conc = [int(c) for c in args.concurrency.split(",")]
        configs = {"batching": {}, "no batching": {"WHITEBOX_MAX_BATCH_SIZE": "1"}}
        rows += run_e2e(
            [m for m in args.e2e_models.split(",") if m],
            conc,
            args.threads,
            16 if args.quick else args.e2e_requests,
            args.e2e_size,
            configs,
            ["saliency", "gradcam", "fem"],
        )
    _save(rows, machine, args)
    print(f"# done in {time.perf_counter() - t_start:.0f} s; {args.md}", flush=True)
    return 0


def _save(rows, machine, args) -> None:
    from benchmarks.report import render

    cmd = "python -m benchmarks " + " ".join(sys.argv[1:])
    for path, text in (
        (args.json, json.dumps({"machine": machine, "command": cmd, "rows": rows}, indent=1, default=str)),
        (args.md, render(rows, machine, cmd)),
    ):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)


if __name__ == "__main__":
    sys.exit(main())

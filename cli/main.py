"""The `whitebox` command: serve (all in one), gateway, worker, explain, models, report, hash-key.

The commands that run the worker side import it inside the command: `whitebox gateway` runs the
gateway in this process, which must not load torch or the worker package (docs/architecture.md, "The layout")."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from cli.embedded_redis import EmbeddedRedis
from common.images import decode
from schemas.api import ExplainRequest, is_index
from schemas.problems import Problem
from schemas.registry import load_registry
from schemas.settings import Settings
from service.keys import hash_key, new_key
from service.server import run as run_gateway


def cmd_gateway(args) -> int:
    run_gateway(host=args.host, port=args.port)
    return 0


def cmd_worker(args) -> int:
    from workers.serving.main import main  # torch stays out of the gateway commands

    main()
    return 0


def _child_env(redis_url: str | None, host: str, port: int) -> dict[str, str]:
    """The environment of the children: a copy of ours, plus the embedded Redis and the bind address."""
    env = dict(os.environ)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env["WHITEBOX_HOST"], env["WHITEBOX_PORT"] = host, str(port)
    return env


def cmd_serve(args) -> int:
    """Embedded Redis (unless REDIS_URL is set), the worker(s), the gateway; Ctrl-C/SIGTERM stops all.
    A worker that dies is restarted; one that keeps dying, or the gateway dying, stops the stack."""
    s = Settings.from_env()
    redis = None
    if not s.redis_url:
        redis = EmbeddedRedis(Path(s.data_dir) / "redis", maxmemory=s.redis_maxmemory).start()
        print(f"whitebox: embedded Redis at {redis.url}", flush=True)
    host, port = args.host or s.host, args.port or s.port
    env = _child_env(redis.url if redis else None, host, port)
    sup = Supervisor(lambda: subprocess.Popen([sys.executable, "-m", "workers"], env=env), s)
    sup.workers = [sup.start_worker() for _ in range(args.workers)]
    sup.gateway = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    print(f"whitebox: gateway on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        return sup.run()
    finally:
        _stop_all([*sup.workers, sup.gateway])
        if redis:
            redis.stop()


class Supervisor:
    """Restarts a worker that exits; more than ``worker_restarts`` restarts within ``restart_window_s``,
    the gateway exiting, or a signal ends :meth:`run` (its exit code)."""

    def __init__(self, spawn: Callable[[], subprocess.Popen], s: Settings):
        self.spawn, self.limit, self.window = spawn, s.worker_restarts, s.restart_window_s
        self.workers: list[subprocess.Popen] = []
        self.gateway: subprocess.Popen | None = None
        self.restarts: deque[float] = deque()
        self.stopping = False

    def start_worker(self) -> subprocess.Popen:
        p = self.spawn()
        print(f"whitebox: worker started (pid {p.pid})", flush=True)
        return p

    def run(self) -> int:
        def stop(*_):
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        code = 0
        while not self.stopping and not code:
            code = self._check()
            time.sleep(0.2)
        return code

    def _check(self) -> int:
        """0 while the stack runs, else the exit code of the command (after its message)."""
        if self.gateway is not None and self.gateway.poll() is not None:
            print(f"whitebox: the gateway exited with code {self.gateway.returncode}; stopping", file=sys.stderr)
            return self.gateway.returncode or 1
        for i, p in enumerate(self.workers):
            if p.poll() is None or self.stopping:
                continue
            now = time.monotonic()
            self.restarts.append(now)
            while self.restarts and self.restarts[0] < now - self.window:
                self.restarts.popleft()
            if len(self.restarts) > self.limit:
                print(
                    f"whitebox: the worker keeps dying (exit code {p.returncode}; more than {self.limit} restarts "
                    f"within {self.window:g} s, WHITEBOX_WORKER_RESTARTS); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return p.returncode if p.returncode and p.returncode > 0 else 1
            print(f"whitebox: worker pid {p.pid} exited with code {p.returncode}; restarting", file=sys.stderr)
            self.workers[i] = self.start_worker()
        return 0


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def cmd_models(args) -> int:
    reg = load_registry(Settings.from_env().models_path)
    for m in reg.models:
        print(f"{m.name}\t{m.architecture}\t{m.num_classes} classes\tinput {m.input.size}")
    return 0


def cmd_explain(args) -> int:
    """One image from the shell, no server: writes one PNG per method (and prints the prediction)."""
    # the worker side, in this process only for this command (torch stays out of the gateway commands)
    from workers.models.loading import load_model
    from workers.serving.pipeline import Item, Limits, run_batch
    from workers.serving.targets import resolve_target

    s = Settings.from_env()
    reg = load_registry(s.models_path)
    entry = reg.get(args.model)
    if entry is None:
        print(f"unknown model {args.model!r}", file=sys.stderr)
        return 2
    data = Path(args.image).read_bytes()
    req = _explain_request(args, data)
    model = load_model(entry, reg)
    try:
        decoded = decode(data, s.max_image_pixels, req.window(), req.frame)
        item = Item(req, decoded.image, target_index=resolve_target(model, req.target), image_info=decoded.info)
    except Problem as e:
        return _problem(e)
    run_batch(model, [item], limits=Limits.of(s))
    if item.result is None:
        return _problem(item.error or Problem("no result"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p = item.result.prediction
    print(f"prediction: {p.label} ({p.score:.3f}); target: {item.result.target.label}")
    for e in item.result.explanations:
        f = out / f"{Path(args.image).stem}.{e.method}.png"
        f.write_bytes(base64.b64decode(getattr(e, args.output)))
        print(f"{e.method}: {f} ({e.compute_ms:.1f} ms)")
    return 0


def _explain_request(args, data: bytes) -> ExplainRequest:
    return ExplainRequest.model_validate(
        {
            "model": args.model,
            "image": base64.b64encode(data).decode(),
            "methods": [json.loads(m) if m.startswith("{") else m for m in args.methods],
            "target": int(args.target) if is_index(args.target) else args.target,
            "outputs": [args.output],
        }
    )


def _problem(p: Problem) -> int:
    print(json.dumps(p.problem(), indent=2), file=sys.stderr)
    return 1


def cmd_hash_key(args) -> int:
    """The salted hash of a key read from stdin, or (--new) a new random key and its hash."""
    if args.new:
        key = new_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("whitebox hash-key: no key on stdin (or use --new)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def cmd_report(args, rest) -> int:
    from workers.evaluation.report import main as report_main  # torch stays out of the gateway commands

    return report_main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="whitebox", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="embedded Redis + one worker + the gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("gateway", help="the HTTP gateway (needs REDIS_URL)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    sub.add_parser("worker", help="one worker process (needs REDIS_URL)")
    sub.add_parser("models", help="list the registry's models")
    p = sub.add_parser("explain", help="explain one image from the shell, no server")
    p.add_argument("image")
    p.add_argument("--model", default="shapes-cnn")
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam", "fem"])
    p.add_argument("--target", default="predicted")
    p.add_argument("--output", default="overlay_png", choices=["heatmap_png", "overlay_png", "mask_png"])
    p.add_argument("--out", default="explanations")
    p = sub.add_parser("hash-key", help="the salted hash of an API key on stdin (for WHITEBOX_API_KEY_HASHES)")
    p.add_argument("--new", action="store_true", help="generate a new random key and print it with its hash")
    sub.add_parser("report", help="evaluation report of §7 metrics (see `whitebox report --help`)", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("report", "bench"):  # `bench`: the name before the speed suite took it
        return cmd_report(None, argv[1:])
    args = ap.parse_args(argv)
    return {
        "serve": cmd_serve,
        "gateway": cmd_gateway,
        "worker": cmd_worker,
        "models": cmd_models,
        "explain": cmd_explain,
        "hash-key": cmd_hash_key,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

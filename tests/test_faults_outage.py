"""Redis outages and the supervised `whitebox serve`, with real processes (issue 11, items 1 and 7).

A stack of its own (embedded Redis, one worker, one gateway, the demo model only), so stopping Redis
leaves the session stack alone. Redis is terminated (it comes back empty, as a restart without
persistence) and, separately, frozen with SIGSTOP; every route that needs Redis must answer 503
problem+json with Retry-After within a bound, then explain must answer 200 within 5 s of Redis being
back, served by the same worker and gateway processes. Run with ``-s`` to see the figures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from cli.embedded_redis import EmbeddedRedis, free_port
from schemas import queue as q
from tests.conftest import ROOT, Stack, write_demo_registry
from tests.helpers import png_b64, random_image

pytestmark = pytest.mark.integration

REDIS_TIMEOUT_S = 0.5  # WHITEBOX_REDIS_TIMEOUT_S of this stack
OUTAGE_S = 8.0
ANSWER_BOUND_S = 3.0  # each answer during the outage
RECOVERY_S = 5.0  # explain answers 200 this soon after Redis is back
IMAGE = png_b64(random_image(64, 64))
EXPLAIN = {"model": "shapes-cnn", "image": IMAGE, "methods": ["gradcam"]}
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WHITEBOX_REDIS_TIMEOUT_S", str(REDIS_TIMEOUT_S))
        mp.setenv("WHITEBOX_RETRY_AFTER_S", "2")
        s = Stack(tmp, write_demo_registry(tmp))
    yield s
    print("\noutage figures:", json.dumps(FIGURES, indent=1))
    s.stop()


def calls(job_id: str) -> list[tuple[str, str, dict | None]]:
    """Every route that needs Redis: (method, path, JSON body)."""
    return [
        ("POST", "/v1/explain", EXPLAIN),
        ("POST", "/v1/jobs", EXPLAIN),
        ("GET", f"/v1/jobs/{job_id}", None),
        (
            "POST",
            "/v1/evaluate",
            {"model": "shapes-cnn", "images": [IMAGE], "methods": ["gradcam"], "metrics": ["sparseness"]},
        ),
        ("POST", "/v1/compare", {"model": "shapes-cnn", "image": IMAGE, "methods": ["gradcam", "fem"]}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/shapes-cnn", None),
        ("POST", "/v1/models/shapes-cnn:explain", {"instances": [IMAGE], "parameters": {"methods": ["fem"]}}),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/models/shapes-cnn/ready", None),
    ]


def hit_during(stack: Stack, job_id: str, seconds: float) -> list[tuple[str, int, float, httpx.Response]]:
    """Cycle through ``calls`` for ``seconds``: (path, status, answer time, response) per call."""
    out = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        while time.monotonic() < deadline:
            for method, path, body in calls(job_id):
                t0 = time.monotonic()
                r = c.request(method, path, json=body)
                out.append((path, r.status_code, time.monotonic() - t0, r))
    return out


def assert_all_unavailable(stack: Stack, answers: list[tuple[str, int, float, httpx.Response]]) -> None:
    address = f"{stack.redis.host}:{stack.redis.port}"
    for path, status, dt, r in answers:
        assert status == 503, (path, status, r.text[:300])
        assert r.headers["content-type"].startswith("application/problem+json"), (path, r.headers)
        assert int(r.headers["retry-after"]) >= 1, path
        assert dt < ANSWER_BOUND_S, (path, dt)
        body = r.text
        assert address not in body and str(stack.redis.port) not in body and "Traceback" not in body, (path, body)
        assert r.json()["status"] == 503


def explain_until_ok(stack: Stack, bound_s: float) -> tuple[float, httpx.Response]:
    """Seconds until an explain answers 200 (retrying its 503s), at most ``bound_s``."""
    t0 = time.monotonic()
    r = None
    with httpx.Client(base_url=stack.url, timeout=10) as c:
        while time.monotonic() - t0 < bound_s:
            r = c.post("/v1/explain", json=EXPLAIN)
            if r.status_code == 200:
                return time.monotonic() - t0, r
            assert r.status_code == 503, r.text[:300]
            time.sleep(0.1)
    raise AssertionError(f"no 200 within {bound_s} s of Redis being back; last {r and r.text[:300]}\n{stack.logs()}")


def worker_pids(stack: Stack) -> set[int]:
    return worker_pids_at(stack.redis.url)


def worker_pids_at(url: str) -> set[int]:
    """The pids in the live worker keys."""
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        return {json.loads(r.get(k) or "{}").get("pid") for k in r.scan_iter(match=q.WORKER_PATTERN)}
    finally:
        r.close()


def assert_same_processes(stack: Stack, pids: tuple[int, int]) -> None:
    assert len(stack.procs) == 2 and (stack.worker.pid, stack.gateway.pid) == pids  # none restarted
    assert stack.worker.poll() is None and stack.gateway.poll() is None, stack.logs()
    # the heartbeat is back at once (it retries with backoff while Redis fails)
    deadline = time.monotonic() + q.HEARTBEAT_EVERY_S
    while (live := worker_pids(stack)) != {stack.worker.pid} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live == {stack.worker.pid}, stack.logs()


def worker_log(stack: Stack) -> str:
    return "".join(f.read_text() for f in stack.tmp.glob("worker-*.log"))


def outage(stack: Stack, kind: str, freeze: bool) -> None:
    """Stop Redis (terminate, or SIGSTOP when ``freeze``) for OUTAGE_S while every route is hit; then
    Redis back on the same port and explain served again by the same processes."""
    pids = (stack.worker.pid, stack.gateway.pid)
    log_before = len(worker_log(stack))
    job = httpx.post(stack.url + "/v1/jobs", json=EXPLAIN, timeout=30)
    assert job.status_code == 202, job.text
    if freeze:
        os.kill(stack.redis.proc.pid, signal.SIGSTOP)
    else:
        stack.redis.stop()
    try:
        answers = hit_during(stack, job.json()["id"], OUTAGE_S)
    finally:
        if freeze:
            os.kill(stack.redis.proc.pid, signal.SIGCONT)
        else:
            stack.redis.start()
    recovery, r = explain_until_ok(stack, RECOVERY_S)
    times = sorted(dt for _, _, dt, _ in answers)
    FIGURES[kind] = {
        "answers": len(answers),
        "statuses": sorted({s for _, s, _, _ in answers}),
        "answer_s_median": round(times[len(times) // 2], 3),
        "answer_s_max": round(times[-1], 3),
        "recovery_s": round(recovery, 3),
    }
    assert_all_unavailable(stack, answers)
    assert len(answers) >= len(calls("x")), answers  # every route was asked at least once
    assert r.json()["explanations"][0]["method"] == "gradcam"
    assert_same_processes(stack, pids)
    if freeze:  # Redis kept its data: the job queued before the outage is done, not lost
        url = f"{stack.url}/v1/jobs/{job.json()['id']}"
        wait_s = 10.0
        deadline = time.monotonic() + wait_s
        while (state := httpx.get(url, timeout=10).json())["status"] != "done" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state["status"] == "done", state
    # the worker logs a line or two per outage (loop, heartbeat, recovery), never a traceback per attempt
    new = worker_log(stack)[log_before:]
    assert "Traceback" not in new and new.count("\n") <= 5 and new.count("lost Redis") <= 1, new


def test_redis_terminated_then_restarted_empty(outage_stack):
    s = outage_stack
    assert redis.Redis.from_url(s.redis.url).config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-ttl"}
    outage(s, "terminated", freeze=False)
    # the restarted Redis was empty: the worker re-created its group under the same consumer name
    r = redis.Redis.from_url(s.redis.url, decode_responses=True)
    consumers = [c["name"] for c in r.xinfo_consumers(q.stream_key("shapes-cnn"), q.GROUP)]
    assert len(consumers) == 1 and consumers[0].endswith(f"-{s.worker.pid}"), consumers


def test_redis_frozen_with_sigstop(outage_stack):
    outage(outage_stack, "sigstop", freeze=True)


def test_sync_explain_sent_before_the_outage(outage_stack):
    """A synchronous request in flight when Redis goes away: its 200, or a clear 503/504 problem."""
    s = outage_stack
    pids = (s.worker.pid, s.gateway.pid)
    slow = {
        "model": "shapes-cnn",
        "image": IMAGE,
        "methods": [{"name": "integrated_gradients", "params": {"steps": 512}}],
    }
    got: list[httpx.Response] = []
    t = threading.Thread(target=lambda: got.append(httpx.post(s.url + "/v1/explain", json=slow, timeout=180)))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    s.redis.stop()
    time.sleep(4.0)
    s.redis.start()
    t.join(150)
    assert not t.is_alive() and got, "the synchronous request hung"
    r = got[0]
    FIGURES["sync_before_outage"] = {"status": r.status_code, "answered_after_s": round(time.monotonic() - t0, 3)}
    if r.status_code == 200:
        assert r.json()["explanations"][0]["method"] == "integrated_gradients"
    else:
        assert r.status_code in (503, 504), r.text[:300]
        assert r.headers["content-type"].startswith("application/problem+json")
        assert str(s.redis.port) not in r.text and "Traceback" not in r.text
    explain_until_ok(s, RECOVERY_S)
    assert_same_processes(s, pids)


def test_redis_out_of_memory(outage_stack):
    """Redis at its maxmemory with nothing left to evict refuses writes: 503 + Retry-After, the worker
    waits, and explain works again once there is room."""
    s = outage_stack
    pids = (s.worker.pid, s.gateway.pid)
    r = redis.Redis.from_url(s.redis.url, decode_responses=True)
    r.config_set("maxmemory", "1")  # every write refused, the job streams kept (volatile-ttl)
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for method, path, body in [("POST", "/v1/explain", EXPLAIN), ("POST", "/v1/jobs", EXPLAIN)]:
                p = c.request(method, path, json=body)
                assert p.status_code == 503 and int(p.headers["retry-after"]) >= 1, p.text[:300]
                assert p.headers["content-type"].startswith("application/problem+json")
                assert "full" in p.json()["detail"], p.json()
            assert c.get("/v1/models").status_code == 200  # reads still work
        time.sleep(3.0)  # heartbeats refused meanwhile
    finally:
        r.config_set("maxmemory", "1gb")
    explain_until_ok(s, RECOVERY_S)
    assert_same_processes(s, pids)


# ---- whitebox serve supervises its worker ------------------------------------------------------


def serve(tmp: Path, extra: dict[str, str]) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    env = {
        **os.environ,
        "WHITEBOX_PORT": str(port),
        "WHITEBOX_DATA_DIR": str(tmp),
        "WHITEBOX_MODELS": str(write_demo_registry(tmp)),
        "WHITEBOX_LOG_LEVEL": "WARNING",
        "WHITEBOX_WORKER_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("REDIS_URL", None)
    out = tmp / "serve.log"
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve"], env=env, cwd=ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT
    )
    return p, out, port


def started_workers(out: Path) -> list[int]:
    return [int(x) for x in re.findall(r"worker started \(pid (\d+)\)", out.read_text())]


def wait_for(cond, timeout: float, what: str, out: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout} s:\n{out.read_text()[-3000:]}")


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def explain_ok(port: int) -> bool:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/explain", json=EXPLAIN, timeout=60)
    return r.status_code == 200


def test_serve_restarts_a_killed_worker(tmp_path):
    p, out, port = serve(tmp_path, {})
    try:
        wait_for(lambda: ready(port), 180, "ready", out)
        (first,) = started_workers(out)
        os.kill(first, signal.SIGKILL)
        t0 = time.monotonic()
        pids = wait_for(lambda: started_workers(out)[1:], 30, "a new worker", out)
        assert pids[0] != first and p.poll() is None
        wait_for(lambda: explain_ok(port), 120, "explain after the restart", out)
        print(f"\nserve: worker SIGKILLed -> new worker and explain 200 in {time.monotonic() - t0:.1f} s")
        assert f"worker pid {first} exited with code -9; restarting" in out.read_text()
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, out.read_text()
    finally:
        if p.poll() is None:
            p.kill()


def test_serve_stops_when_the_worker_keeps_dying(tmp_path):
    # a worker asked to serve a model the registry lacks exits (code 1) right after it starts
    p, out, port = serve(tmp_path, {"WHITEBOX_WORKER_RESTARTS": "1", "WHITEBOX_WORKER_MODELS": "no-such-model"})
    try:
        t0 = time.monotonic()
        code = p.wait(120)
        print(f"\nserve: a worker that keeps dying stopped the stack in {time.monotonic() - t0:.1f} s (exit {code})")
        text = out.read_text()
        assert code != 0, text
        assert "the worker keeps dying (exit code 1; more than 1 restarts within 60 s" in text, text
        assert len(started_workers(out)) == 2, text  # the first one and its one restart
        with pytest.raises(OSError):  # the gateway is gone with the stack
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if p.poll() is None:
            p.kill()


def test_worker_started_before_redis_waits_for_it(tmp_path):
    """A worker whose Redis is not up yet waits for it (no exit, no traceback), then serves."""
    server = EmbeddedRedis(tmp_path / "redis")  # its port is chosen, the server not started
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "WHITEBOX_MODELS": str(write_demo_registry(tmp_path)),
        "WHITEBOX_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S),
        "WHITEBOX_WORKER_THREADS": "1",
        "WHITEBOX_LOG_LEVEL": "WARNING",
    }
    out = tmp_path / "worker.log"
    w = subprocess.Popen(
        [sys.executable, "-m", "workers"], env=env, cwd=ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: "lost Redis" in out.read_text(), 60, "the worker noticing Redis is down", out)
        time.sleep(1.0)
        assert w.poll() is None, out.read_text()
        server.start()
        r = redis.Redis.from_url(server.url, decode_responses=True)
        wait_for(lambda: r.get(q.model_key("shapes-cnn")), 10, "the worker's model card", out)
        assert worker_pids_at(server.url) == {w.pid}
        w.terminate()
        assert w.wait(30) == 0
        assert "Traceback" not in out.read_text()
    finally:
        if w.poll() is None:
            w.kill()
        server.stop()

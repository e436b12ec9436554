"""Faults through the real stack: cancellation, a worker killed while it holds a job,
a poison job that ends in the dead-letter stream, auth, backpressure, timeouts, and
the all-in-one command stopping cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis

from cli.embedded_redis import free_port
from schemas import queue as q
from schemas.api import ExplainRequest
from tests.conftest import ROOT
from tests.helpers import png_b64, random_image
from tests.test_service import assert_problem

pytestmark = pytest.mark.integration


def pause(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(1.3)  # its blocking XREADGROUP (1 s) has expired: new jobs stay in the stream


def resume(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGCONT)


def poll(client: httpx.Client, job_id: str, until: tuple[str, ...], timeout: float = 90, seen=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"/v1/jobs/{job_id}").json()
        if seen is not None:
            seen.append(s.get("progress", 0.0))
        if s["status"] in until:
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {s['status']} after {timeout}s")


def long_job(client: httpx.Client, stride: int = 1) -> str:
    r = client.post(
        "/v1/jobs",
        json={
            "model": "vgg11",
            "image": png_b64(random_image(64, 64, seed=5)),
            "methods": [{"name": "occlusion", "params": {"window": 4, "stride": stride}}],
            "outputs": ["array"],
        },
    )
    assert r.status_code == 202, r.text[:300]
    return r.json()["id"]


def test_long_job_progress_and_cancel(client):
    job = long_job(client)
    progress: list[float] = []
    s = poll(client, job, ("running",), seen=progress)
    deadline = time.monotonic() + 60
    while s["progress"] < 0.05 and time.monotonic() < deadline:
        s = client.get(f"/v1/jobs/{job}").json()
        progress.append(s["progress"])
        time.sleep(0.1)
    assert 0 < s["progress"] < 1
    assert progress == sorted(progress)  # progress only grows
    assert client.delete(f"/v1/jobs/{job}").status_code == 202
    s = poll(client, job, ("cancelled", "done", "failed"), timeout=60)
    assert s["status"] == "cancelled" and s["error"]["status"] == 409
    assert s["progress"] < 0.5  # the work stopped at the next batch, long before the end


def test_killed_worker_job_still_completes(stack, client):
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    before = set(r.keys(q.WORKER_PATTERN))
    extra = stack.start_worker()
    deadline = time.monotonic() + 120
    while len(set(r.keys(q.WORKER_PATTERN)) - before) < 1:
        assert time.monotonic() < deadline and extra.poll() is None, stack.logs()
        time.sleep(0.2)
    pause(stack.worker)
    try:
        job = long_job(client, stride=2)
        poll(client, job, ("running",))
        pending = r.xpending_range(q.stream_key("vgg11"), q.GROUP, min="-", max="+", count=10)
        assert [p["consumer"] for p in pending] == [f"{socket.gethostname()}-{extra.pid}"]
        extra.send_signal(signal.SIGKILL)
        extra.wait()
    finally:
        resume(stack.worker)
    s = poll(client, job, ("done", "failed"), timeout=120)
    assert s["status"] == "done", s
    assert s["result"]["explanations"][0]["method"] == "occlusion"
    metrics = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics").text
    assert 'whitebox_jobs_reclaimed_total{model="vgg11"} 1.0' in metrics
    stack.wait_ready(stack.url)


def test_poison_job_goes_to_dead_letter(stack, client):
    """A job whose earlier holders all died (three deliveries, never acknowledged) is not
    run a fourth time: it goes to the dead-letter stream and its client gets an error."""
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    req = ExplainRequest.model_validate(
        {"model": "shapes-cnn", "image": png_b64(random_image(64, 64)), "methods": ["fem"]}
    )
    job = q.ExplainJob(id=q.new_job_id(), model="shapes-cnn", request=req)
    r.hset(
        q.job_key(job.id),
        mapping={"status": "queued", "progress": "0", "model": "shapes-cnn", "created": str(job.enqueued_at)},
    )
    stream = q.stream_key("shapes-cnn")
    dead_before = r.xlen(q.DEAD_LETTER_STREAM)
    p = r.pipeline(transaction=True)  # nobody else can take it between the add and the read
    p.xadd(stream, q.encode_job(job))
    p.xreadgroup(q.GROUP, "ghost-1", {stream: ">"}, count=1)
    mid, _ = p.execute()
    r.xclaim(stream, q.GROUP, "ghost-2", 0, [mid])
    r.xclaim(stream, q.GROUP, "ghost-3", 0, [mid])
    assert r.xpending_range(stream, q.GROUP, min=mid, max=mid, count=1)[0]["times_delivered"] == 3
    s = poll(client, job.id, ("done", "failed"), timeout=60)
    assert s["status"] == "failed" and s["error"]["status"] == 500 and "dead-letter" in s["error"]["detail"]
    assert r.xlen(q.DEAD_LETTER_STREAM) == dead_before + 1
    assert r.xpending_range(stream, q.GROUP, min=mid, max=mid, count=1) == []


@pytest.fixture(scope="module")
def gw2(stack):
    port = free_port()
    stack.start_gateway(
        port, {"WHITEBOX_API_KEYS": "k1,k2", "WHITEBOX_MAX_QUEUE_DEPTH": "2", "WHITEBOX_REQUEST_TIMEOUT_S": "1.5"}
    )
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url)
    return url


def test_api_keys(gw2):
    assert_problem(httpx.get(gw2 + "/v1/methods"), 401, "api key")
    assert_problem(httpx.get(gw2 + "/v1/methods", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(gw2 + "/v1/methods", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert httpx.get(gw2 + "/v1/models", headers={"X-API-Key": "k2"}).status_code == 200
    assert httpx.get(gw2 + "/v2/health/live").status_code == 200  # probes need no key


def test_timeout_and_backpressure(stack, gw2):
    h = {"X-API-Key": "k1"}
    body = {"model": "shapes-cnn", "image": png_b64(random_image(64, 64)), "methods": ["fem"]}
    pause(stack.worker)
    try:
        t0 = time.monotonic()
        assert_problem(httpx.post(gw2 + "/v1/explain", json=body, headers=h, timeout=30), 504, "no result")
        assert time.monotonic() - t0 < 10
        r1 = httpx.post(gw2 + "/v1/jobs", json=body, headers=h)
        assert r1.status_code == 202
        r2 = httpx.post(gw2 + "/v1/jobs", json=body, headers=h)
        p = assert_problem(r2, 503, "retry")
        assert r2.headers["retry-after"] == "1" and "2 jobs are queued" in p["detail"]
    finally:
        resume(stack.worker)
    with httpx.Client(base_url=gw2, headers=h) as c:
        assert poll(c, r1.json()["id"], ("done", "failed"))["status"] == "done"
    stack.wait_ready(stack.url)


def test_serve_starts_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "WHITEBOX_PORT": str(port),
        "WHITEBOX_DATA_DIR": str(tmp_path),
        "WHITEBOX_LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    env.pop("WHITEBOX_MODELS", None)
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and p.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(0.3)
        assert ready, p.stdout.read() if p.poll() is not None else "not ready"
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/explain",
            timeout=60,
            json={"model": "shapes-cnn", "image": png_b64(random_image(64, 64)), "methods": ["fem"]},
        )
        assert r.status_code == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        out = p.stdout.read()
        assert "embedded Redis at redis://127.0.0.1:" in out
        redis_port = int(out.split("embedded Redis at redis://127.0.0.1:")[1].split("/")[0])
        for port_ in (port, redis_port):  # gateway and Redis are gone
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port_), timeout=1).close()
    finally:
        if p.poll() is None:
            p.kill()

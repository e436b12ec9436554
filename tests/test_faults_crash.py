"""The crash fault run (issue 11, item 7): real processes (an embedded Redis, one gateway, two workers)
and 200 async jobs on the demo model while a worker is SIGKILLed every 5 s and restarted.

Asserted: every job ends ``done`` (0 lost); every job id is published once on the events channel
(0 duplicated, counted by a subscriber of our own during the whole run); every map equals, bit for
bit, the map of the same request computed through the same stack before the faults; and the consumers
of the killed workers leave the consumer group. The ``whitebox_jobs_total`` counters are not used:
they live in the worker processes and die with them.

The workers read one job per batch (``WHITEBOX_MAX_BATCH_SIZE=1``): a batched map depends on the
batch it ran in (float sums in another order, ``tests/test_batching.py`` bounds that by 1e-5), so
only unbatched jobs can be compared bit for bit with the fault-free reference. ``make faults`` runs
this file with the figures printed (-s)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from schemas import queue as q
from tests.conftest import WEIGHTS, Stack, write_demo_registry
from tests.helpers import png_b64
from workers.training.shapes import generate

pytestmark = pytest.mark.integration

MODEL = "shapes-cnn"
JOBS = 200
SUBMIT_S = 60.0  # the jobs are sent at an even pace over this time, while the kills go on
KILL_EVERY_S = 5.0
IMAGES = 20
# cheap methods, and two that keep a worker busy long enough for a kill to catch a job in flight
MIXES: list[list[Any]] = [
    ["saliency"],
    ["gradcam", "fem"],
    ["guided_backprop", "deconvnet"],
    [{"name": "lrp"}],
    [{"name": "integrated_gradients", "params": {"steps": 32}}],
    [{"name": "occlusion", "params": {"window": 8, "stride": 4}}],
    [{"name": "smoothgrad", "params": {"samples": 16, "seed": 1}}],
    ["deeplift"],
]
DISTINCT = math.lcm(len(MIXES), IMAGES)  # (job % 8, job % 20): 40 distinct requests, each sent 5 times
DRAIN_S = 120.0  # bound on the wait for the last jobs once the kills stop
CONSUMERS_SLACK = 1
CONSUMERS_WAIT_S = q.HEARTBEAT_TTL_S + 20.0  # a dead worker's liveness key expires, then a claim pass


def request_of(k: int, images: list[str]) -> dict[str, Any]:
    return {"model": MODEL, "image": images[k % IMAGES], "methods": MIXES[k % len(MIXES)], "outputs": ["array"]}


def arrays(state: dict[str, Any]) -> list[str]:
    """The base64 float32 data of every map of a finished job, in method order."""
    return [e["array"]["data"] for e in state["result"]["explanations"]]


class EventCounter:
    """Counts the publishes per job id on the events channel (a real subscriber, in a thread)."""

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.ps = self.r.pubsub()
        self.ps.subscribe(q.EVENTS_CHANNEL)
        deadline = time.monotonic() + 10
        while (m := self.ps.get_message(timeout=1)) is None or m["type"] != "subscribe":
            assert time.monotonic() < deadline, "no subscribe confirmation"
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.ps.get_message(timeout=0.2)
            if m is not None and m["type"] == "message":
                self.counts[m["data"]] += 1

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self.ps.close()
        self.r.close()


@dataclass
class Workers:
    """The live worker processes; a kill takes the one holding a job (else the oldest) and starts another."""

    stack: Stack
    r: redis.Redis
    live: list[Any] = field(default_factory=list)
    kills: int = 0
    kills_holding: int = 0

    def holder(self, wait_s: float = 3.0) -> Any | None:
        """A live worker with a job delivered and not yet acknowledged, waiting at most ``wait_s``."""
        by_pid = {p.pid: p for p in self.live}
        deadline = time.monotonic() + wait_s
        while True:
            info = self.r.xpending(q.stream_key(MODEL), q.GROUP)
            for c in info.get("consumers") or []:
                beat = self.r.get(q.worker_key(c["name"])) if c["pending"] > 0 else None
                pid = json.loads(beat).get("pid") if beat else None  # the heartbeat names the consumer's pid
                if pid in by_pid:
                    return by_pid[pid]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def kill_one(self) -> None:
        victim = self.holder()
        self.kills_holding += victim is not None
        victim = victim or self.live[0]
        victim.kill()  # SIGKILL
        victim.wait()
        self.live.remove(victim)
        self.live.append(self.stack.start_worker())
        self.kills += 1


def wait_for_workers(r: redis.Redis, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(r.keys(q.WORKER_PATTERN)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} workers heart-beating after {timeout}s"
        time.sleep(0.2)


def finish_all(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """The final state of every job, polling GET /v1/jobs/{id} for at most ``timeout`` seconds."""
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(ids) and time.monotonic() < deadline:
        for job_id in [i for i in ids if i not in out]:
            s = client.get(f"/v1/jobs/{job_id}").json()
            if s.get("status") in ("done", "failed", "cancelled"):
                out[job_id] = s
        time.sleep(0.3)
    return out


@dataclass
class CrashRun:
    ids: list[str]
    states: dict[str, dict[str, Any]]
    reference: list[list[str]]
    events: Counter[str]
    kills: int
    kills_holding: int
    consumers: list[int]  # XINFO CONSUMERS count after the run, once per poll
    live_workers: int


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text[:300]
    return str(r.json()["id"])


def run_with_kills(client: httpx.Client, workers: Workers, images: list[str]) -> tuple[list[str], dict]:
    """JOBS jobs sent at an even pace over SUBMIT_S while a thread kills a worker every KILL_EVERY_S."""
    stop = threading.Event()

    def killer() -> None:  # on a fixed schedule, whatever the time a kill took
        due = time.monotonic() + KILL_EVERY_S
        while not stop.wait(max(0.0, due - time.monotonic())):
            workers.kill_one()
            due += KILL_EVERY_S

    thread = threading.Thread(target=killer, daemon=True)
    ids: list[str] = []
    t0 = time.monotonic()
    thread.start()
    try:
        while len(ids) < JOBS:
            time.sleep(max(0.0, t0 + len(ids) * SUBMIT_S / JOBS - time.monotonic()))
            ids.append(submit(client, request_of(len(ids), images)))
    finally:
        stop.set()
        thread.join(30)
    return ids, finish_all(client, ids, DRAIN_S)


def count_consumers(r: redis.Redis, live: int) -> list[int]:
    """XINFO CONSUMERS counts, polled until at most live + slack or CONSUMERS_WAIT_S passed."""
    seen: list[int] = []
    deadline = time.monotonic() + CONSUMERS_WAIT_S
    while True:
        seen.append(len(r.xinfo_consumers(q.stream_key(MODEL), q.GROUP)))
        if seen[-1] <= live + CONSUMERS_SLACK or time.monotonic() > deadline:
            return seen
        time.sleep(1.0)


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> Any:
    if not WEIGHTS.exists():
        pytest.fail(f"the demo model's weights are missing: {WEIGHTS} (run `make train`)")
    tmp = tmp_path_factory.mktemp("crash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WHITEBOX_MAX_BATCH_SIZE", "1")
        stack = Stack(tmp, registry=write_demo_registry(tmp))
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    events = None
    try:
        workers = Workers(stack, r, live=[stack.worker, stack.start_worker()])
        wait_for_workers(r, 2)
        imgs, _, _ = generate(IMAGES, seed=2611)
        images = [png_b64(a) for a in imgs]
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            ref_ids = [submit(client, request_of(k, images)) for k in range(DISTINCT)]
            ref_states = finish_all(client, ref_ids, DRAIN_S)
            assert all(ref_states.get(i, {}).get("status") == "done" for i in ref_ids), "reference run failed"
            reference = [arrays(ref_states[i]) for i in ref_ids]
            events = EventCounter(stack.redis.url)
            ids, states = run_with_kills(client, workers, images)
        time.sleep(stack_claim_s(stack))  # a late second publish (a reclaimed job finished twice) has time to land
        events.stop()
        consumers = count_consumers(r, len(workers.live))
        yield CrashRun(
            ids, states, reference, events.counts, workers.kills, workers.kills_holding, consumers, len(workers.live)
        )
    finally:
        if events is not None:
            events.stop()
        r.close()
        stack.stop()


def stack_claim_s(stack: Stack) -> float:
    return int(stack.env["WHITEBOX_CLAIM_IDLE_MS"]) / 1000


def test_crash_run_figures(crash):
    lat = [s["result"]["timings"]["total_ms"] for s in crash.states.values() if s["status"] == "done"]
    p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"), float("nan"))
    dup = sum(1 for i in crash.ids if crash.events[i] > 1)
    print(
        f"\ncrash run: {len(crash.ids)} jobs, {crash.kills} SIGKILLs every {KILL_EVERY_S:.0f} s "
        f"({crash.kills_holding} of a worker holding a job), {len(lat)} done, "
        f"{len(crash.ids) - len(crash.states)} unfinished; job latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(lat, default=float('nan')):.1f} ms; published twice or more: {dup}; "
        f"consumers in the group after the run: {crash.consumers[-1]} (live workers {crash.live_workers}, "
        f"{crash.consumers[0]} right after it, polled {len(crash.consumers)} times)"
    )
    assert crash.kills >= SUBMIT_S // KILL_EVERY_S - 1
    assert crash.kills_holding > 0  # at least one kill lost a job in flight, which had to be re-delivered


def test_no_job_lost(crash):
    missing = [i for i in crash.ids if i not in crash.states]
    assert not missing, f"{len(missing)} jobs not finished within {DRAIN_S}s"
    bad = {i: (s["status"], s.get("error")) for i, s in crash.states.items() if s["status"] != "done"}
    assert not bad, f"{len(bad)} jobs did not end done: {list(bad.values())[:3]}"


def test_no_job_published_twice(crash):
    counts = Counter(crash.events[i] for i in crash.ids)
    assert counts == Counter({1: len(crash.ids)}), f"publishes per job -> number of jobs: {dict(counts)}"


def test_maps_bit_identical_to_fault_free_run(crash):
    compared = 0
    for k, job_id in enumerate(crash.ids):
        state = crash.states.get(job_id)
        if state is None or state["status"] != "done":
            continue  # counted by test_no_job_lost
        assert arrays(state) == crash.reference[k % DISTINCT], f"job {k} ({MIXES[k % len(MIXES)]}) differs"
        compared += 1
    assert compared > 0


def test_dead_consumers_leave_the_group(crash):
    assert crash.consumers[-1] <= crash.live_workers + CONSUMERS_SLACK, (
        f"{crash.consumers[-1]} consumers in the group after {CONSUMERS_WAIT_S:.0f}s, "
        f"{crash.live_workers} workers alive ({crash.kills} killed)"
    )

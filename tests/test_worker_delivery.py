"""Exactly-once delivery and the consumer group, against a real Redis (the embedded redis-server):
a job held by two consumers (read by one, XAUTOCLAIMed by the other) and finished by both is stored
and published once; a job finished elsewhere is not started again; results too large or refused by
Redis fail the job with a problem instead of the worker; dead consumers leave the group."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from prometheus_client import CollectorRegistry

from cli.embedded_redis import EmbeddedRedis
from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.api import ExplainRequest
from schemas.problems import CancelledProblem
from schemas.queue import JobResult
from schemas.status import JobStatus
from workers.serving.consumers import REMOVE_SCRIPT, remove_dead_consumers
from workers.serving.outcome import Delivery, Entry, Outcomes

MODEL = "shapes-cnn"
STREAM = q.stream_key(MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as s:
        yield s


@pytest.fixture()
def r(server):
    c = redis.Redis.from_url(server.url, decode_responses=True)
    c.flushall()
    c.xgroup_create(STREAM, q.GROUP, id="0", mkstream=True)
    yield c
    c.close()


def outcomes(server, max_result_bytes: int = 10**7) -> Outcomes:
    """A worker's Outcomes: its own connection and metrics."""
    c = redis.Redis.from_url(server.url, decode_responses=True)
    return Outcomes(c, WorkerMetrics(CollectorRegistry()), 60, max_result_bytes)


def count(o: Outcomes, outcome: str) -> float:
    return o.metrics.jobs.labels(MODEL, outcome)._value.get()


def enqueue(r: redis.Redis, job_id: str) -> q.ExplainJob:
    req = ExplainRequest.model_validate({"model": MODEL, "image": "unused", "methods": ["saliency"]})
    job = q.ExplainJob(id=job_id, model=MODEL, request=req)
    r.hset(q.job_key(job_id), mapping={"status": JobStatus.queued.value})
    r.xadd(STREAM, q.encode_job(job))
    return job


def hold_twice(r: redis.Redis, n: int) -> list[tuple[Entry, Entry]]:
    """The n entries of the stream, each held by two consumers: read by "original", then taken over
    by "reclaimer" with XAUTOCLAIM (as a worker does when the original looks dead)."""
    got = r.xreadgroup(q.GROUP, "original", {STREAM: ">"}, count=n)
    read = [Entry(STREAM, mid, fields) for _, entries in got for mid, fields in entries]
    _, claimed, *_ = r.xautoclaim(STREAM, q.GROUP, "reclaimer", min_idle_time=0, start_id="0-0", count=n)
    taken = [Entry(STREAM, mid, fields) for mid, fields in claimed]
    assert [e.mid for e in read] == [e.mid for e in taken] and len(read) == n
    for e in taken:
        (info,) = r.xpending_range(STREAM, q.GROUP, min=e.mid, max=e.mid, count=1)
        assert info["consumer"] == "reclaimer" and info["times_delivered"] == 2
    return list(zip(read, taken, strict=True))


class Events:
    """Every id published on the events channel, from a subscriber of its own."""

    def __init__(self, r: redis.Redis):
        self.ps = r.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(q.EVENTS_CHANNEL)
        assert self.ps.get_message(timeout=2.0) is None  # the subscribe confirmation, skipped
        self.ids: list[str] = []

    def drain(self, quiet_s: float = 0.5) -> list[str]:
        """Read until no message came for ``quiet_s`` (a late duplicate would arrive within that)."""
        while (m := self.ps.get_message(timeout=quiet_s)) is not None:
            self.ids.append(m["data"])
        return self.ids


def done(tag: str) -> JobResult:
    return JobResult(status=JobStatus.done, response={"by": tag})


def stored(r: redis.Redis, job_id: str) -> JobResult:
    return JobResult.model_validate_json(r.get(q.result_key(job_id)))


def test_a_job_finished_by_two_consumers_is_stored_and_published_once(server, r):
    job = enqueue(r, "j1")
    (read, taken) = hold_twice(r, 1)[0]
    events = Events(r)
    original, reclaimer = outcomes(server), outcomes(server)
    assert reclaimer.finish(taken, job, done("reclaimer")) is True  # the reclaimed copy finishes first
    assert original.finish(read, job, done("original")) is False  # then the original worker
    assert stored(r, "j1").response == {"by": "reclaimer"}
    assert events.drain() == ["j1"]
    assert r.hget(q.job_key("j1"), "status") == JobStatus.done.value
    assert r.xpending(STREAM, q.GROUP)["pending"] == 0 and r.xlen(STREAM) == 0  # both acknowledged
    assert count(reclaimer, "done") == 1 and count(original, "duplicate") == 1 and count(original, "done") == 0


def test_concurrent_finishers_store_exactly_one_result_per_job(server, r):
    """Both holders finish each job at the same instant (a barrier per job): one wins every time."""
    n = 60
    jobs = [enqueue(r, f"c{i}") for i in range(n)]
    held = hold_twice(r, n)
    events = Events(r)
    sides = {"original": outcomes(server), "reclaimer": outcomes(server)}
    won: dict[str, list[bool]] = {"original": [], "reclaimer": []}
    barrier = threading.Barrier(2)

    def finisher(side: str, k: int) -> None:
        for job, pair in zip(jobs, held, strict=True):
            barrier.wait(timeout=10)
            won[side].append(sides[side].finish(pair[k], job, done(side)))

    threads = [threading.Thread(target=finisher, args=(s, k)) for k, s in enumerate(sides)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(a != b for a, b in zip(won["original"], won["reclaimer"], strict=True))  # exactly one per job
    for job, first_is_original in zip(jobs, won["original"], strict=True):
        assert stored(r, job.id).response == {"by": "original" if first_is_original else "reclaimer"}
    assert sorted(events.drain()) == sorted(j.id for j in jobs)  # each id published once
    assert r.xpending(STREAM, q.GROUP)["pending"] == 0 and r.xlen(STREAM) == 0
    dup = count(sides["original"], "duplicate") + count(sides["reclaimer"], "duplicate")
    assert dup == n and count(sides["original"], "done") + count(sides["reclaimer"], "done") == n


def test_a_reclaimed_copy_of_a_finished_job_is_not_run_again(server, r):
    job = enqueue(r, "j2")
    (read, taken) = hold_twice(r, 1)[0]
    original, reclaimer = outcomes(server), outcomes(server)
    assert original.start(Delivery(read, job), time.time()) is True
    assert r.hget(q.job_key("j2"), "status") == JobStatus.running.value
    assert original.finish(read, job, done("original")) is True
    assert reclaimer.start(Delivery(taken, job), time.time()) is False  # already finished: not started
    assert r.hget(q.job_key("j2"), "status") == JobStatus.done.value  # not set back to running
    assert r.xpending(STREAM, q.GROUP)["pending"] == 0 and count(reclaimer, "duplicate") == 1


def test_a_job_the_gateway_marked_cancelled_is_still_finished_once(server, r):
    """The gateway marks a queued job cancelled (status only): the worker's cancelled result is the first."""
    job = enqueue(r, "j3")
    r.hset(q.job_key("j3"), "status", JobStatus.cancelled.value)
    (read, _) = hold_twice(r, 1)[0]
    o = outcomes(server)
    assert o.fail(Delivery(read, job), CancelledProblem("cancelled before it ran")) is True
    result = stored(r, "j3")
    assert result.status == JobStatus.cancelled and result.problem and result.problem.status == 409


def test_a_result_over_the_limit_fails_the_job_with_413(server, r):
    job = enqueue(r, "big")
    (read, _) = hold_twice(r, 1)[0]
    events = Events(r)
    o = outcomes(server, max_result_bytes=2048)
    result = JobResult(status=JobStatus.done, response={"data": "x" * 5000})
    size = len(result.model_dump_json(exclude_none=True).encode())
    assert o.finish(read, job, result) is True
    got = stored(r, "big")
    assert got.status == JobStatus.failed and got.problem is not None and got.problem.status == 413
    assert got.problem.detail == (
        f"result of {size} bytes is over the limit of 2048 bytes; ask for fewer methods/outputs or a smaller image"
    )
    assert r.hget(q.job_key("big"), "status") == JobStatus.failed.value
    assert events.drain() == ["big"] and r.xpending(STREAM, q.GROUP)["pending"] == 0


def test_a_result_redis_refuses_fails_the_job_with_a_5xx_problem(server, r):
    """Redis out of memory (maxmemory, noeviction) refuses a 12 MB result: a 503 problem is stored in its
    place once the refused command's buffer is freed, the entry is acknowledged, nothing raises."""
    job = enqueue(r, "oom")
    (read, _) = hold_twice(r, 1)[0]
    old = r.config_get("maxmemory*")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) + 4 * 1024**2))
    try:
        o = outcomes(server, max_result_bytes=64 * 1024**2)
        result = JobResult(status=JobStatus.done, response={"data": "x" * 12 * 1024**2})
        assert o.finish(read, job, result) is True
    finally:
        r.config_set("maxmemory", old["maxmemory"])
        r.config_set("maxmemory-policy", old["maxmemory-policy"])
    got = stored(r, "oom")
    assert got.status == JobStatus.failed and got.problem is not None and got.problem.status == 503
    assert "could not be stored: the job store is out of memory" in got.problem.detail
    assert "maxmemory" not in got.problem.detail  # Redis' own text stays in the log
    assert r.xpending(STREAM, q.GROUP)["pending"] == 0 and count(o, "failed") == 1


def test_dead_consumers_leave_the_group(r):
    """Removed: no pending entry, no heartbeat, idle past the limit. Kept: the caller, a consumer with a
    live heartbeat, one that still holds an entry (until it was claimed), one active just now."""
    for i in range(5):
        enqueue(r, f"d{i}")

    def read(name: str, ack: bool = True) -> None:
        for _, entries in r.xreadgroup(q.GROUP, name, {STREAM: ">"}, count=1):
            if ack:
                r.xack(STREAM, q.GROUP, *[mid for mid, _ in entries])

    for name in ("dead", "alive", "me"):
        read(name)
    read("holding", ack=False)
    r.set(q.worker_key("alive"), "{}", ex=q.HEARTBEAT_TTL_S)
    time.sleep(0.3)
    read("fresh")
    assert remove_dead_consumers(r, STREAM, 200, me="me") == ["dead"]
    assert {c["name"] for c in r.xinfo_consumers(STREAM, q.GROUP)} == {"alive", "holding", "fresh", "me"}
    # once another worker claimed and finished the held job, the consumer that held it goes too
    _, claimed, *_ = r.xautoclaim(STREAM, q.GROUP, "me", min_idle_time=0, start_id="0-0")
    assert len(claimed) == 1
    r.xack(STREAM, q.GROUP, claimed[0][0])
    time.sleep(0.3)
    assert sorted(remove_dead_consumers(r, STREAM, 200, me="me")) == ["fresh", "holding"]
    assert {c["name"] for c in r.xinfo_consumers(STREAM, q.GROUP)} == {"alive", "me"}


def test_a_consumer_that_reads_after_the_listing_keeps_its_entry(r):
    """The check and XGROUP DELCONSUMER are one script that looks again: a consumer that read an entry
    after it was listed as idle and empty is not removed, so that entry cannot be lost."""
    r.xgroup_createconsumer(STREAM, q.GROUP, "late")
    enqueue(r, "e1")
    time.sleep(0.3)
    (listed,) = r.xinfo_consumers(STREAM, q.GROUP)
    assert listed["name"] == "late" and listed["pending"] == 0 and listed["idle"] >= 200
    r.xreadgroup(q.GROUP, "late", {STREAM: ">"}, count=1)  # between the listing and the removal
    script = r.register_script(REMOVE_SCRIPT)
    assert script(keys=[STREAM, q.worker_key("late")], args=[q.GROUP, "late", 200]) == 0
    (info,) = r.xpending_range(STREAM, q.GROUP, "-", "+", 10)
    assert info["consumer"] == "late"

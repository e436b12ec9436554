"""The worker's heartbeat (docs/architecture.md, "The path of one request", step 3): a thread that
keeps the worker's liveness key fresh, re-publishes its model cards before they expire, and re-claims
the jobs the worker holds (XCLAIM to itself resets their idle time), so only the jobs of a dead worker
grow idle enough for another worker's XAUTOCLAIM."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialBackoff

from schemas import queue as q
from workers.serving.outcome import Entry

log = logging.getLogger("whitebox.worker")
BACKOFF = ExponentialBackoff(cap=0.5, base=0.05)  # between heartbeats while Redis is down


class HeldJobs:
    """The stream entries this worker is processing, per stream (shared with the heartbeat thread)."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def holding(self, entries: list[Entry]) -> Iterator[None]:
        with self._lock:
            for e in entries:
                self._held.setdefault(e.stream, set()).add(e.mid)
        try:
            yield
        finally:
            with self._lock:
                for e in entries:
                    self._held.get(e.stream, set()).discard(e.mid)

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {s: list(ids) for s, ids in self._held.items() if ids}


class Heartbeat:
    """Liveness, model cards and held jobs of one worker, kept fresh in Redis."""

    def __init__(self, r: redis.Redis, consumer: str, cards: dict[str, dict[str, Any]], held: HeldJobs):
        self.r, self.consumer, self.cards, self.held = r, consumer, cards, held
        self._last_cards = 0.0

    def publish(self, cards: bool = True) -> None:
        """The liveness key, and the model cards when ``cards``."""
        p = self.r.pipeline()
        if cards:
            self._last_cards = time.monotonic()
            for name, card in self.cards.items():
                p.set(q.model_key(name), json.dumps(card), ex=q.MODEL_CARD_TTL_S)
        alive = {"models": list(self.cards), "pid": os.getpid(), "ts": time.time()}
        p.set(q.worker_key(self.consumer), json.dumps(alive), ex=q.HEARTBEAT_TTL_S)
        p.execute()

    def beat(self) -> None:
        """One heartbeat: liveness, the cards a third of their TTL after the last time, held jobs."""
        self.publish(cards=time.monotonic() - self._last_cards > q.MODEL_CARD_TTL_S / 3)
        for stream, ids in self.held.snapshot().items():  # reset the idle time of what we hold
            self.r.xclaim(stream, q.GROUP, self.consumer, min_idle_time=0, message_ids=ids, justid=True)

    def run(self, stop: threading.Event) -> None:
        """Beat every HEARTBEAT_EVERY_S; after a failure (one log line per outage) it beats again at
        once with the cards, with exponential backoff, until Redis answers."""
        failed_at: float | None = None
        delay = q.HEARTBEAT_EVERY_S
        while not stop.wait(delay):
            try:
                if failed_at is not None:
                    self._last_cards = 0.0  # a Redis that comes back empty needs the cards too
                self.beat()
            except redis.RedisError as e:
                if failed_at is None:
                    log.warning("heartbeat failed (%s); retrying", type(e).__name__)
                    failed_at, failures = time.monotonic(), 0
                failures += 1
                delay = min(BACKOFF.compute(failures), q.HEARTBEAT_EVERY_S)
                continue
            if failed_at is not None:
                log.warning("heartbeat restored after %.1f s", time.monotonic() - failed_at)
            failed_at, delay = None, q.HEARTBEAT_EVERY_S

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="heartbeat", daemon=True)
        t.start()
        return t

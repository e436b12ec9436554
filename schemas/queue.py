"""The queue protocol: every Redis key, stream, group and TTL that the gateway
and the workers share, and the job message that crosses the stream.

Layout (prefix ``whitebox:``)::

    jobs:{model}        stream of JobMessage, read by consumer group GROUP
    dead                dead-letter stream (jobs delivered too many times)
    job:{id}            hash: status, progress, model, created, error   (TTL)
    result:{id}         JSON of the ExplainResponse or problem          (TTL)
    cancel:{id}         present when the client cancelled               (TTL)
    events              pub/sub channel: job id whose result was stored
    worker:{worker_id}  heartbeat: JSON {models, pid, ts}               (short TTL)
    model:{name}        JSON model card published by a worker           (TTL)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

PREFIX = "whitebox:"
GROUP = "workers"
EVENTS_CHANNEL = PREFIX + "events"
DEAD_LETTER_STREAM = PREFIX + "dead"

# TTLs in seconds
RESULT_TTL_S = 3600
HEARTBEAT_TTL_S = 10
HEARTBEAT_EVERY_S = 2.0
MODEL_CARD_TTL_S = 60


def stream_key(model: str) -> str:
    return f"{PREFIX}jobs:{model}"


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}result:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}cancel:{job_id}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


WORKER_PATTERN = PREFIX + "worker:*"


def model_key(name: str) -> str:
    return f"{PREFIX}model:{name}"


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobMessage(BaseModel):
    """What the gateway puts on ``jobs:{model}`` (field ``job`` of the entry).

    The request is already validated; the image bytes travel base64 in the
    message (bounded by the gateway's body limit), never through a file."""

    id: str
    model: str
    request: dict[str, Any]  # ExplainRequest.model_dump()
    image_size: tuple[int, int] = Field(..., description="(width, height) as the client sent it")
    enqueued_at: float = Field(default_factory=time.time)
    kind: str = "explain"

    def encode(self) -> dict[str, str]:
        return {"job": self.model_dump_json()}

    @classmethod
    def decode(cls, fields: dict) -> JobMessage:
        raw = fields.get("job") if "job" in fields else fields.get(b"job")
        if isinstance(raw, bytes):
            raw = raw.decode()
        return cls.model_validate_json(raw)

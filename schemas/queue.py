"""The queue protocol: every Redis key, stream, group and TTL that the gateway
and the workers share, the job messages that cross the stream and the result the
worker stores.

Layout (prefix ``whitebox:``)::

    jobs:{model}        stream of JobMessage (field "job"), read by consumer group GROUP
    dead                dead-letter stream (jobs delivered too many times)
    job:{id}            hash: status, progress, model, created, error   (TTL)
    result:{id}         JSON of a JobResult                             (TTL)
    cancel:{id}         present when the client cancelled               (TTL)
    events              pub/sub channel: job id whose result was stored
    worker:{worker_id}  heartbeat: JSON {models, pid, ts}               (short TTL)
    model:{name}        JSON model card published by a worker           (TTL)
    rate:{client}       hash: token bucket of an API key or address     (TTL)
    quota:{client}      sorted set: job ids a key or address has queued (TTL)
    authfail:{address}  count of wrong API keys from an address         (TTL 60 s)

A ``client`` is ``key-<sha256 prefix of the key>`` or ``addr-<address>`` (``service.quota``).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from schemas.api import CompareRequest, EvaluateRequest, ExplainRequest
from schemas.problems import ProblemDetails
from schemas.status import JobStatus

PREFIX = "whitebox:"
GROUP = "workers"
EVENTS_CHANNEL = PREFIX + "events"
DEAD_LETTER_STREAM = PREFIX + "dead"

# TTLs in seconds (the result TTL is a setting: schemas.settings)
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


def rate_key(client: str) -> str:
    return f"{PREFIX}rate:{client}"


def quota_key(client: str) -> str:
    return f"{PREFIX}quota:{client}"


def auth_failures_key(address: str) -> str:
    return f"{PREFIX}authfail:{address}"


def new_job_id() -> str:
    return uuid.uuid4().hex


class _Job(BaseModel):
    """Fields of every job message. The request was validated by the gateway; the image bytes
    travel base64 inside it (bounded by the gateway's body limit), never through a file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    model: str
    enqueued_at: float = Field(default_factory=time.time)
    target_index: int | None = Field(
        None, ge=0, description="the request's target resolved by the gateway: a class index, or None for 'predicted'"
    )


class ExplainJob(_Job):
    kind: Literal["explain"] = "explain"
    request: ExplainRequest


class EvaluateJob(_Job):
    kind: Literal["evaluate"] = "evaluate"
    request: EvaluateRequest


class CompareJob(_Job):
    kind: Literal["compare"] = "compare"
    request: CompareRequest


JobMessage = Annotated[ExplainJob | EvaluateJob | CompareJob, Field(discriminator="kind")]
_JOB = TypeAdapter(JobMessage)
JOB_FIELD = "job"  # the stream entry's one field


def encode_job(job: ExplainJob | EvaluateJob | CompareJob) -> dict[str, str]:
    return {JOB_FIELD: job.model_dump_json()}


def decode_job(fields: dict[Any, Any]) -> ExplainJob | EvaluateJob | CompareJob:
    """The message of a stream entry (raises pydantic.ValidationError or KeyError when malformed)."""
    raw = fields[JOB_FIELD] if JOB_FIELD in fields else fields[JOB_FIELD.encode()]
    return _JOB.validate_json(raw)


class JobResult(BaseModel):
    """What the worker stores at ``result:{id}``: the response body when done, else the problem."""

    model_config = ConfigDict(extra="forbid")
    status: JobStatus
    response: dict[str, Any] | None = Field(
        None, description="ExplainResponse / EvaluateResponse / CompareResponse dump, by the job's kind"
    )
    problem: ProblemDetails | None = None

    @model_validator(mode="after")
    def _one(self) -> JobResult:
        if (self.status == JobStatus.done) != (self.response is not None):
            raise ValueError("a done job has a response, and only a done job")
        if self.status != JobStatus.done and self.problem is None:
            raise ValueError("a job that is not done has a problem")
        return self

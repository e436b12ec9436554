"""What the OpenAPI document says besides the routes: the version, the description, the tags, and the
problem+json answers a route declares (``responses=problems(404, 422)``). ``docs/openapi.json`` is
this document, written by ``python -m service.openapi`` (docs/architecture.md)."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from schemas.problems import ProblemDetails

PROBLEM_JSON = "application/problem+json"
TITLE = "Whitebox"


def package_version() -> str:
    """The installed package's version; from pyproject.toml when the package is not installed."""
    try:
        return version("whitebox")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


DESCRIPTION = """Pixel relevance maps for CNN image classifiers: the white-box methods of the survey
(Ayyar et al., JEI 2021) and black-box references, served from a queue of model workers.

* `POST /v1/explain` answers with the maps; `POST /v1/jobs` runs the same request as a job.
* `POST /v1/evaluate` and `POST /v1/compare` measure the maps (survey §7).
* `GET /v1/models` and `GET /v1/methods` list what can be asked.
* Health, readiness and model metadata follow the Open Inference Protocol (`/v2/...`);
  `POST /v1/models/{name}:explain` is the KServe V1 explainer protocol.

Every error is `application/problem+json` (RFC 9457). With API keys configured, every route but the
probes, `/metrics` and the docs needs a key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

TAGS: list[dict[str, Any]] = [
    {"name": "explain", "description": "Relevance maps of one image, answered when they are ready"},
    {"name": "jobs", "description": "The same request as a job: create, poll its progress and result, cancel"},
    {"name": "evaluate", "description": "Metrics of the maps (survey §7): against a ground truth, or map vs map"},
    {"name": "discovery", "description": "The models served, with their layers and applicable methods; the methods"},
    {"name": "health", "description": "Liveness, readiness and model metadata (Open Inference Protocol), metrics"},
    {"name": "kserve", "description": "The KServe V1 explainer protocol"},
]

WHEN = {
    401: "No API key, or an unknown one",
    404: "Unknown model or job",
    408: "The request body was not received in time (body_timeout_s); the connection is closed",
    409: "The job was cancelled",
    413: "The request body is over the limit (max_body_bytes), chunked ones included",
    422: "The request is invalid: schema, JSON nesting, image, target, or a method that does not apply to the model",
    429: "Too many requests (rate limit), jobs (quota) or wrong API keys from this address; Retry-After says when",
    500: "The worker failed on the job",
    503: "Overloaded (too many jobs queued; Retry-After), or no worker or Redis",
    504: "No result in time; the job was cancelled",
}
# what any operation may answer before its route runs: a body too slow or too large (service.limits), and
# 503 from the server at its connection limit (max_connections; uvicorn's text/plain answer)
DOOR = (408, 413, 503)
AT_CONNECTION_LIMIT = "Too many open connections (max_connections): the server's text/plain answer"


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each status answered with a problem+json body."""
    return {s: {"model": ProblemDetails, "description": WHEN[s]} for s in statuses}


PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}


def problems_as_problem_json(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI files an extra response's model under application/json; problem bodies are
    application/problem+json. Every operation also gets the answers of the door (``DOOR``)."""
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            for response in responses.values():
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema") == PROBLEM_REF:
                    content[PROBLEM_JSON] = content.pop("application/json")
            with_door_answers(responses)
    return spec


def with_door_answers(responses: dict[str, Any]) -> None:
    """The statuses of ``DOOR`` in one operation's responses; a 503 also as the server's text/plain."""
    for status in DOOR:
        entry = responses.setdefault(str(status), {"description": WHEN[status]})
        entry.setdefault("content", {}).setdefault(PROBLEM_JSON, {"schema": PROBLEM_REF})
    limit = responses["503"]
    limit["content"].setdefault("text/plain", {"schema": {"type": "string"}})
    if AT_CONNECTION_LIMIT not in limit["description"]:
        limit["description"] += "; or " + AT_CONNECTION_LIMIT

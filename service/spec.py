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
    409: "The job was cancelled",
    413: "The request body is over the limit",
    422: "The request is invalid: schema, image, target, or a method that does not apply to the model",
    500: "The worker failed on the job",
    503: "Overloaded (too many jobs queued; Retry-After), or no worker or Redis",
    504: "No result in time; the job was cancelled",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each status answered with a problem+json body."""
    return {s: {"model": ProblemDetails, "description": WHEN[s]} for s in statuses}


def problems_as_problem_json(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI files an extra response's model under application/json; problem bodies are
    application/problem+json."""
    ref = {"$ref": "#/components/schemas/ProblemDetails"}
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema") == ref:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return spec

"""Problem details (RFC 9457): the one error type that both the gateway and the
worker raise, and that the gateway renders as application/problem+json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_BASE = "https://whitebox.dev/problems/"


class ErrorItem(BaseModel):
    loc: list[str] = Field(..., description="path of the offending field, e.g. ['body', 'methods', '0', 'params']")
    msg: str
    type: str | None = None


class ProblemDetails(BaseModel):
    """application/problem+json (RFC 9457): every 4xx/5xx answer of the API has this body."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(..., description=PROBLEM_BASE + "<slug>")
    title: str
    status: int
    detail: str
    errors: list[ErrorItem] | None = None


class Problem(Exception):
    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(
        self,
        detail: str,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.errors = errors
        self.headers = headers or {}

    @classmethod
    def from_details(cls, details: ProblemDetails) -> Problem:
        """The exception again from its stored body (a job's result crossing Redis)."""
        p = cls(details.detail, errors=[e.model_dump(exclude_none=True) for e in details.errors or []] or None)
        p.status, p.title = details.status, details.title
        p.slug = details.type.rsplit("/", 1)[-1] or "worker-failure"
        return p

    def details(self) -> ProblemDetails:
        return ProblemDetails.model_validate(self.problem())

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self) -> dict[str, Any]:
        p: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if self.errors:
            p["errors"] = self.errors
        elif self.field:
            p["errors"] = [{"loc": self.field.split("."), "msg": self.detail}]
        return p


class ValidationProblem(Problem):
    status, title, slug = 422, "Request validation failed", "validation"


class ImageProblem(Problem):
    status, title, slug = 422, "Invalid image", "invalid-image"


class MethodProblem(Problem):
    """The method cannot be applied as asked (unknown layer, a layer type with no rule, no GAP head...)."""

    status, title, slug = 422, "Method not applicable", "method-not-applicable"


class OverBudget(Problem):
    """The request's estimated cost is over ``max_request_cost`` (``schemas.cost``)."""

    status, title, slug = 422, "Request over the cost budget", "over-budget"


class TargetProblem(Problem):
    status, title, slug = 422, "Invalid target", "invalid-target"


class NotFound(Problem):
    status, title, slug = 404, "Not found", "not-found"


class PayloadTooLarge(Problem):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class Unauthorized(Problem):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class TooManyRequests(Problem):
    """A rate limit, a job quota or the lockout after wrong API keys (with Retry-After)."""

    status, title, slug = 429, "Too many requests", "too-many-requests"


class RequestTimeout(Problem):
    status, title, slug = 408, "Request timeout", "request-timeout"


class Overloaded(Problem):
    status, title, slug = 503, "Service overloaded", "overloaded"


class Unavailable(Problem):
    status, title, slug = 503, "Service unavailable", "unavailable"


class Timeout(Problem):
    status, title, slug = 504, "Explanation timed out", "timeout"


class CancelledProblem(Problem):
    status, title, slug = 409, "Job cancelled", "cancelled"


class WorkerFailure(Problem):
    status, title, slug = 500, "Explanation failed", "worker-failure"

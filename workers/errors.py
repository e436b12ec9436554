"""Errors the explainer library raises; each maps to a problem+json answer."""
from __future__ import annotations


class ExplainError(Exception):
    status = 500
    title = "Explanation failed"
    type = "about:blank"

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def problem(self) -> dict:
        p = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if self.field:
            p["errors"] = [{"loc": ["params", self.field], "msg": self.detail}]
        return p


class MethodError(ExplainError):
    """The method cannot be applied as asked (unknown layer, layer type with no rule, no GAP head...)."""

    status = 422
    title = "Method not applicable"
    type = "https://whitebox.dev/problems/method-not-applicable"


class TargetError(ExplainError):
    status = 422
    title = "Invalid target"
    type = "https://whitebox.dev/problems/invalid-target"


class Cancelled(ExplainError):
    status = 409
    title = "Job cancelled"
    type = "https://whitebox.dev/problems/cancelled"

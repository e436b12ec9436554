"""Errors the explainer library raises; each is a problem+json answer (schemas.problems)."""

from __future__ import annotations

from schemas.problems import CancelledProblem, MethodProblem, Problem, TargetProblem

ExplainError = Problem
MethodError = MethodProblem
TargetError = TargetProblem
Cancelled = CancelledProblem

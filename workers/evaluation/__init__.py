"""Evaluation of explanation maps (survey §7): metrics, ``evaluate`` / ``compare`` (behind
``/v1/evaluate`` and ``/v1/compare``), the benchmark command (``python -m workers.evaluation.report``)
and the Clever-Hans demo model (``workers.training.clever_hans``).

Metric names, parameters and what they need are declared in ``schemas.metrics`` (no torch there).
"""

from workers.evaluation.evaluate import (
    IMPLEMENTED_METRICS,
    aggregate,
    compare,
    compare_methods,  # noqa: F401
    evaluate,
    evaluate_method,
    ground_truth_mask,
)

__all__ = [
    "evaluate",
    "compare",
    "compare_methods",
    "ground_truth_mask",
    "evaluate_method",
    "aggregate",
    "IMPLEMENTED_METRICS",
]

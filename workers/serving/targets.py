"""A request's target as a class index. The gateway resolves it once per job (``ExplainJob.target_index``);
the in-process callers of the pipeline (``whitebox explain``, tests) have no gateway and use this."""

from __future__ import annotations

from schemas.api import is_index
from workers.errors import TargetError
from workers.models.loading import LoadedModel


def check_index(model: LoadedModel, index: int) -> int:
    """``index`` if the model has that class, else a 422 naming the range."""
    if not 0 <= index < model.num_classes:
        raise TargetError(f"class index {index} out of range 0..{model.num_classes - 1}", field="target")
    return index


def resolve_target(model: LoadedModel, target: int | str) -> int | None:
    """The class index ``target`` names (an index, a label or a digit string); None for "predicted"."""
    if target == "predicted":
        return None
    if isinstance(target, int):
        return check_index(model, target)
    if target in model.labels:
        return model.labels.index(target)
    if is_index(target):
        return check_index(model, int(target))
    raise TargetError(f"unknown class label {target!r}; labels: {', '.join(model.labels)}", field="target")

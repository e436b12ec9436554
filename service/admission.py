"""Checks at the door, beyond the request schema: the model is known, the target names one of its
classes (resolved here, once, to the index the job carries), each method applies to the model with its
layer (from the worker's model card), and every image decodes (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from common.images import decode_image
from schemas.api import MethodCall
from schemas.problems import MethodProblem, NotFound, Problem, TargetProblem
from schemas.registry import ModelEntry
from service.state import Gateway


def model_entry(gw: Gateway, name: str) -> ModelEntry:
    """The registry entry of a model a request names (404 listing the models)."""
    entry = gw.registry.get(name)
    if entry is None:
        models = ", ".join(m.name for m in gw.registry.models)
        raise NotFound(f"unknown model {name!r}; models: {models}", field="model")
    return entry


def known(gw: Gateway, name: str) -> ModelEntry:
    """The registry entry of a model a path names (404)."""
    entry = gw.registry.get(name)
    if entry is None:
        raise NotFound(f"unknown model {name!r}")
    return entry


def resolve_target(entry: ModelEntry, labels: list[str], target: int | str) -> int | None:
    """A class index, a class label or a digit string -> the class index; "predicted" -> None.
    A digit string must be in range as an index; a label that is also a digit string names its class."""
    if target == "predicted":
        return None
    if isinstance(target, int):
        return _in_range(entry, target)
    if target.isdigit():
        index = _in_range(entry, int(target))
        return labels.index(target) if target in labels else index
    if target in labels:
        return labels.index(target)
    raise TargetProblem(f"unknown class label {target!r}; labels: {', '.join(labels)}", field="target")


def _in_range(entry: ModelEntry, index: int) -> int:
    if not 0 <= index < entry.num_classes:
        raise TargetProblem(f"class index {index} out of range 0..{entry.num_classes - 1}", field="target")
    return index


def check_methods(card: dict[str, Any], model: str, methods: list[MethodCall]) -> None:
    """Each method applicable to the model, and its layer one of the model's (422 naming the call)."""
    layers = {layer["name"] for layer in card.get("layers", [])}
    unsupported = card.get("unsupported_methods", {})
    for i, call in enumerate(methods):
        if call.name in unsupported:
            raise MethodProblem(
                f"{call.name} cannot be applied to model {model!r}: {unsupported[call.name]}",
                field=f"methods.{i}.name",
            )
        layer = call.params.get("layer")
        if layer is not None and layer not in layers:
            raise MethodProblem(
                f"unknown layer {layer!r} for model {model!r}; usable layers: {', '.join(sorted(layers))}",
                field=f"methods.{i}.params.layer",
            )


async def admit(gw: Gateway, model: str, target: int | str, methods: list[MethodCall]) -> int | None:
    """Model known, target valid, methods applicable; the target's class index (None: predicted)."""
    entry = model_entry(gw, model)
    index = resolve_target(entry, gw.labels[model], target)
    card = await gw.queue.card(model)
    if card is not None:
        check_methods(card, model, methods)
    return index


def check_image(gw: Gateway, b64: str, field: str = "image") -> None:
    """The image decodes (PNG or JPEG, within the pixel limit, not truncated); else 422 naming ``field``."""
    try:
        decode_image(b64, gw.settings.max_image_pixels)
    except Problem as e:
        e.field = field
        e.errors = None
        raise

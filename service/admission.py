"""Checks at the door, beyond the request schema: the model is known, the target names one of its
classes (resolved here, once, to the index the job carries), each method applies to the model with its
layer (from the worker's model card), the estimated cost and result size are within their budgets
(``schemas.cost``), and every image decodes, off the event loop (docs/architecture.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from common.decoded import Decoded
from common.images import decode, decode_image
from schemas.api import MethodCall, is_index
from schemas.cost import estimate, result_bytes
from schemas.problems import MethodProblem, NotFound, OverBudget, PayloadTooLarge, Problem, TargetProblem
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
    if is_index(target):
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


async def check_image(
    gw: Gateway,
    b64: str,
    field: str = "image",
    window: tuple[float, float] | None = None,
    frame: int | None = None,
) -> Decoded:
    """The image decodes as the worker will decode it (``common.images.decode``: its format and mode
    accepted, within the pixel limit, not truncated, the window and frame applicable); else 422 naming
    ``field``, or ``window_center`` / ``frame`` where the problem is theirs. Decoded in a thread, off the
    event loop."""
    try:
        return await asyncio.to_thread(decode, b64, gw.settings.max_image_pixels, window, frame)
    except Problem as e:
        if e.field not in ("window_center", "frame"):
            e.field = field
        e.errors = None
        raise


async def check_images(gw: Gateway, fields: list[tuple[str, str | None]]) -> None:
    """Masks and maps given as images (``(field, base64)``; None skipped): decoded as the worker will
    (``decode_image``: any accepted format and mode), the pixel limit from the header before decoding."""
    for field, b64 in fields:
        if b64 is None:
            continue
        try:
            await asyncio.to_thread(decode_image, b64, gw.settings.max_image_pixels)
        except Problem as e:
            e.field = field
            e.errors = None
            raise


def check_cost(
    gw: Gateway, model: str, methods: list[MethodCall], images: int = 1, metrics: Sequence[Any] = ()
) -> None:
    """422 when the estimated compute (``schemas.cost``) is over ``max_request_cost``, naming the
    estimate, the limit and the method that costs most."""
    entry = model_entry(gw, model)
    est = estimate([(c.name, c.parsed) for c in methods], entry.input.size, images, metrics)
    limit = gw.settings.max_request_cost
    if est.cost > limit:
        raise OverBudget(
            f"estimated cost {est.cost:,.0f} forward passes at {model!r}'s input size is over the limit of "
            f"{limit:,.0f} (max_request_cost); {est.dominant} costs {est.dominant_cost:,.0f} of it",
            field="methods",
        )


def check_result(gw: Gateway, size: tuple[int, int], methods: int, outputs: Sequence[str], images: int = 1) -> None:
    """413 when the result's size bound (``schemas.cost.result_bytes``) is over ``max_result_bytes``."""
    need = result_bytes(size[0], size[1], methods, outputs, images)
    limit = gw.settings.max_result_bytes
    if need > limit:
        raise PayloadTooLarge(
            f"the result of {methods} method(s) x {', '.join(outputs)} for a {size[0]}x{size[1]} image may take "
            f"{need:,} bytes, over the limit of {limit:,} (max_result_bytes); send a smaller image, fewer "
            "methods or outputs (array is the largest)",
            field="outputs",
        )

"""§6 Eq. 27: the two-generator explainer of Charachon et al., R(x) = |g_s(x) - g_a(x)|.

g_s (similar) reproduces x with the classifier's decision kept, g_a (adversarial) with the
decision flipped; both are trained against one fixed binary classifier
(``python -m workers.training.generators``). The method is applicable only to a model whose
generators exist: ``generators-<model name>.safetensors`` in workers/models/weights/ (or the path
in an optional ``generators`` registry field), trained for exactly these classifier
weights (a parameter hash in the file's metadata).

g_a has one decoder per direction; the classifier's decision on x picks it (the explanation is
of that decision, whatever target is requested). Metadata per image: the decisions on x, g_s(x)
and g_a(x), whether g_s keeps and g_a flips it, and the edits' sizes on the [0, 1] pixel scale
(``*_l1``: mean |g(x) - x| per element, ``*_l2``: ||g(x) - x||_2)."""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from workers.errors import MethodError
from workers.explain.base import Attribution, Context, register
from workers.models import WEIGHTS_DIR
from workers.models.generators import fingerprint, generators_path, load_generators
from workers.models.loading import LoadedModel

_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple]] = weakref.WeakKeyDictionary()


def _path(model: LoadedModel) -> Path:
    explicit = getattr(model.entry, "generators", None)
    if explicit:
        p = Path(explicit)
        return p if p.is_absolute() else (WEIGHTS_DIR / p if not p.exists() else p)
    return generators_path(model.name)


def _load(model: LoadedModel):
    """(pair, meta) or (None, reason)."""
    path = _path(model)
    per_module = _CACHE.setdefault(model.module, {})
    if str(path) in per_module:
        return per_module[str(path)]
    if model.num_classes != 2:
        res = (None, f"needs a binary classifier (model has {model.num_classes} classes)")
    elif not path.exists():
        res = (
            None,
            f"no trained generators for this model ({path.name} not found; "
            "train them with `python -m workers.training.generators`)",
        )
    else:
        try:
            pair, meta = load_generators(path)
        except (RuntimeError, ValueError, OSError) as e:  # an older layout or a damaged file
            pair, meta = None, {}
            res = (None, f"{path.name} cannot be loaded as a generator pair ({type(e).__name__}); retrain them")
        fp = fingerprint(model.module)
        if pair is None:
            pass
        elif meta.get("classifier_sha256") != fp:
            res = (None, f"{path.name} was trained for other classifier weights (parameter hash mismatch)")
        elif int(meta.get("channels", 3)) != model.channels:
            res = (None, f"{path.name} is for {meta.get('channels')}-channel inputs")
        else:
            res = (pair.to(model.device), meta)
    per_module[str(path)] = res
    return res


def applicable(model: LoadedModel) -> str | None:
    pair, why = _load(model)
    return None if pair is not None else why


@register("adversarial_generators", applicable=applicable)
def adversarial_generators(ctx: Context) -> Attribution:
    pair, meta = _load(ctx.model)
    if pair is None:  # attribute() checks first; direct callers get the reason too
        raise MethodError(f"adversarial_generators: {meta}")
    lo, hi = ctx.model.input_bounds()
    x = ctx.x.detach()
    ctx.progress(0.0)
    with torch.no_grad():
        pred = ctx.net(x).argmax(1)  # the decision to explain; it picks g_a's decoder (flip 0 -> 1 or 1 -> 0)
        gs, ga = pair(x, lo.to(x.dtype), hi.to(x.dtype), pred)
        ls, la = ctx.net(gs), ctx.net(ga)
    rel = (gs - ga).abs()
    _, std = ctx.model.mean_std()
    std = std.to(x.dtype)
    ds, da = ((gs - x) * std).flatten(1), ((ga - x) * std).flatten(1)  # edits on the [0, 1] pixel scale
    out = []
    for i in range(x.shape[0]):
        out.append(
            {
                "decision": int(pred[i]),
                "similar_decision": int(ls[i].argmax()),
                "adversarial_decision": int(la[i].argmax()),
                "similar_keeps": bool(int(ls[i].argmax()) == int(pred[i])),
                "adversarial_flips": bool(int(la[i].argmax()) != int(pred[i])),
                "similar_l1": float(ds[i].abs().mean()),
                "similar_l2": float(ds[i].norm()),
                "adversarial_l1": float(da[i].abs().mean()),
                "adversarial_l2": float(da[i].norm()),
            }
        )
    ctx.progress(1.0)
    return Attribution(rel, used_params={"generators": _path(ctx.model).name}, meta=out)

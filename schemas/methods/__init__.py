"""The method catalog: the one place that names every public method, its
family, its paper section, its parameter model and its default reduction.

Each family module declares its entries with :func:`schemas.methods.base.method`;
this package gathers them in ``CATALOG``. The gateway validates requests and
serves ``GET /v1/methods`` from it; the worker maps the same names to
implementations (``workers.explain.base.register``) and a test checks both agree
(see docs/architecture.md).
"""

from typing import Any

from schemas.methods.base import CATALOG, MethodSpec, Params, SmoothGradModifier, method

# importing the family modules fills CATALOG, in this order (the order of GET /v1/methods)
# isort: off
from schemas.methods import linearization, structure, perturbation  # noqa: F401
# isort: on

__all__ = ["CATALOG", "MethodSpec", "Params", "SmoothGradModifier", "method", "parse_params", "default_reduce"]


def parse_params(name: str, params: dict[str, Any] | None) -> Params:
    """Validate ``params`` for method ``name`` (raises KeyError or pydantic ValidationError)."""
    spec = CATALOG[name]
    return spec.params.model_validate(params or {})


def default_reduce(name: str, params: Params | dict[str, Any] | None = None) -> str:
    """The C x H x W -> H x W reduction of a method's map when the request names none: the catalog's
    default, except that SmoothGrad reduces as its base method does (a sum over integrated gradients).
    One-channel methods ("single") answer ``max_abs``: every reduction leaves one channel as it is."""
    if name == "smoothgrad":
        base = params.get("base") if isinstance(params, dict) else getattr(params, "base", None)
        if base in CATALOG:
            name = base
    how = CATALOG[name].default_reduce
    return "max_abs" if how == "single" else how

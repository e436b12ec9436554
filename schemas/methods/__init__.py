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

__all__ = [
    "CATALOG",
    "MethodSpec",
    "Params",
    "SmoothGradModifier",
    "method",
    "parse_params",
    "default_reduce",
    "map_is_signed",
]


def parse_params(name: str, params: dict[str, Any] | None) -> Params:
    """Validate ``params`` for method ``name`` (raises KeyError or pydantic ValidationError)."""
    spec = CATALOG[name]
    return spec.params.model_validate(params or {})


def _base_name(name: str, params: Params | dict[str, Any] | None) -> str:
    """The method whose map ``name`` returns: SmoothGrad's base, else ``name`` itself."""
    if name == "smoothgrad":
        base = params.get("base") if isinstance(params, dict) else getattr(params, "base", None)
        if base in CATALOG:
            return str(base)
    return name


def map_is_signed(name: str, params: Params | dict[str, Any] | None = None, reduce: str | None = None) -> bool:
    """The map as served (after ``reduce``, default per method) can be negative: the method's raw map
    is signed and the reduction keeps the sign (a one-channel map is left as it is by every reduction;
    ``max_abs`` and ``abs_sum`` drop the sign). Signed maps are shown with ``abs_max`` and a diverging
    colour map (``schemas.display``) and read that way by the evaluation."""
    spec = CATALOG[_base_name(name, params)]
    if not spec.signed:
        return False
    if spec.default_reduce == "single":
        return True
    return (reduce or default_reduce(name, params)) in ("sum", "mean", "none")


def default_reduce(name: str, params: Params | dict[str, Any] | None = None) -> str:
    """The C x H x W -> H x W reduction of a method's map when the request names none: the catalog's
    default, except that SmoothGrad reduces as its base method does (a sum over integrated gradients).
    One-channel methods ("single") answer ``max_abs``: every reduction leaves one channel as it is."""
    how = CATALOG[_base_name(name, params)].default_reduce
    return "max_abs" if how == "single" else how

"""The explainer library: importable and testable with no Redis and no HTTP.

One verb, as in Captum::

    from workers.explain import attribute
    a = attribute(model, x, targets, "gradcam", {"layer": "features.10"})
    a.maps  # (N, 1, H, W) raw relevance at the model's input size

Each method is one module (or one family module) that registers its implementation with
``workers.explain.base.register``; the rules the modified backward passes use are in
``workers.explain.rules``, the engine that applies them in ``workers.explain.engine``
(see docs/architecture.md).
"""

# importing the method modules registers them, in this order (the order of a model card's methods)
# isort: off
from workers.explain import gradients, fem, integrated, smooth, linearization, cam  # noqa: F401
from workers.explain import structure, deeplift  # noqa: F401
from workers.explain import attacks, generators, lime, meaningful, occlusion  # noqa: F401

# isort: on
from workers.explain.attribution import applicability, attribute
from workers.explain.base import APPLICABILITY, IMPLEMENTATIONS

__all__ = ["APPLICABILITY", "IMPLEMENTATIONS", "applicability", "attribute"]

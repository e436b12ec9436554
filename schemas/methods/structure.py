"""§5 of the survey: methods that use the structure of the network."""
from __future__ import annotations

from pydantic import Field

from schemas.methods.base import Params, method
from schemas.methods.linearization import LAYER_DOC


class FemParams(Params):
    k: float = Field(1.0, ge=0.0, le=10.0, description="K of the K-sigma threshold (Eq. 26)")
    layer: str | None = Field(None, description=LAYER_DOC)


method(name="fem", family="structure", paper="§5.3 Eq. 26", params=FemParams,
       default_reduce="single", uses_layer=True,
       summary="Feature-based explanation (Fuad et al.): sum_k mean(A_k) * [A_k >= mean_k + K std_k], no gradient")

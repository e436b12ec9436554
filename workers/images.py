"""Image decoding lives in schemas.images (shared with the gateway); re-exported here."""

from schemas.images import decode_image  # noqa: F401
from schemas.problems import ImageProblem as ImageError  # noqa: F401

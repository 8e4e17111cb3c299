"""``upscale-simple``: resize every image by ``scale`` with bilinear or Lanczos resampling.

Params (declared in ``STAGE``): ``method`` (``bilinear`` | ``lanczos``, default ``lanczos``) and ``scale``
(1 to 8, default 2); a scale of 1 leaves the images as they are (contract §10.5).
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.upscale import resize_simple
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, choice, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Resize each image by ``params["scale"]`` and record its new size in the metadata."""
    method = str(params["method"])
    scale = float(params["scale"])
    return edit_each(ctx, images, lambda image: resize_simple(image, method, scale))


STAGE = StageType(
    "upscale-simple", run, (choice("method", ("bilinear", "lanczos"), "lanczos"), number("scale", 1, 8, 2))
)

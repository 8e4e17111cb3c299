"""``upscale-simple``: resize every image by ``scale`` with bilinear or Lanczos resampling.

Params (declared in ``STAGE``): ``method`` (``bilinear`` | ``lanczos``, default ``lanczos``) and ``scale``
(1 to 8, default 2); a scale of 1 leaves the images as they are (contract §10.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.upscale import resize_simple, scaled_size
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, choice, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Resize each image by ``params["scale"]`` and record its new size in the metadata."""
    method = str(params["method"])
    scale = float(params["scale"])
    return edit_each(ctx, images, lambda image: resize_simple(image, method, scale))


def upscaled_size(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """The size ``run`` resizes to (a scale of 1 or less keeps it)."""
    scale = float(params["scale"])
    return scaled_size(size, scale) if scale > 1 else size


STAGE = StageType(
    "upscale-simple",
    run,
    (choice("method", ("bilinear", "lanczos"), "lanczos"), number("scale", 1, 8, 2)),
    size=upscaled_size,
)

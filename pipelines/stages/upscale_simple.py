"""``upscale-simple``: resize every image by ``scale`` with bilinear or Lanczos resampling.

Params: ``method`` (required: ``bilinear`` | ``lanczos``), ``scale`` (int or float, default 1). A scale of 1 or less leaves the images as they are (contract §10.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.upscale import resize_simple, with_image


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Resize each image by ``params["scale"]`` and record its new size in the metadata."""
    method = str(params.get("method"))
    scale = float(params.get("scale", 1))
    resized = []
    for item in images:
        ctx.check_cancelled()
        resized.append(with_image(item, resize_simple(item.image, method, scale)))
    ctx.on_step(1)
    return resized


def estimate(params: Mapping[str, Any]) -> int:
    """One step, whatever the number of images."""
    return 1

"""``reduce-crop``: cut the same rectangle out of every image.

Params: ``left``, ``top`` (default 0), ``width``, ``height`` (required), in pixels. onnx-web took
an ``origin`` object the chain schema cannot carry, so the corner is two flat scalars. The
rectangle must lie inside each image: a crop that would run off the edge is refused, not
shrunk to fit.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.model import stage_sources
from pipelines.imageops.upscale import with_image
from pipelines.stages.spec import StageType, integer


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Crop each input image (or the stage's ``source:`` upload) to the rectangle."""
    left, top = int(params["left"]), int(params["top"])
    width, height = int(params["width"]), int(params["height"])
    cropped = []
    for item in stage_sources(ctx, params, images):
        if left + width > item.image.width or top + height > item.image.height:
            raise ValueError(
                f"crop {width}x{height} at ({left}, {top}) does not fit inside the "
                f"{item.image.width}x{item.image.height} image: "
                "left + width and top + height must not exceed its size"
            )
        cropped.append(with_image(item, item.image.crop((left, top, left + width, top + height))))
    ctx.on_step(1)
    return cropped


STAGE = StageType(
    "reduce-crop",
    run,
    (
        integer("left", 0, 8192, 0),
        integer("top", 0, 8192, 0),
        integer("width", 1, 8192, required=True),
        integer("height", 1, 8192, required=True),
    ),
    max_tile=512,
)

"""``reduce-thumbnail``: shrink every image to fit inside ``width`` x ``height``, keeping its shape.

Params: ``width`` and ``height`` (required), the box to fit in. Images already inside it are
left as they are: a thumbnail never enlarges. (onnx-web's stage always failed: it used the
``None`` that PIL's in-place ``thumbnail`` returns.)
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.model import stage_sources
from pipelines.imageops.upscale import with_image
from pipelines.stages.spec import StageType, integer


def fit_inside(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down by one factor until both sides fit ``box``; never larger than ``size``."""
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, min(box[0], round(size[0] * scale))), max(1, min(box[1], round(size[1] * scale)))


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Shrink each input image (or the stage's ``source:`` upload) with Lanczos to fit the box."""
    box = (int(params["width"]), int(params["height"]))
    reduced = []
    for item in stage_sources(ctx, params, images):
        size = fit_inside(item.image.size, box)
        image = item.image if size == item.image.size else item.image.resize(size, Image.Resampling.LANCZOS)
        reduced.append(with_image(item, image))
    ctx.on_step(1)
    return reduced


STAGE = StageType(
    "reduce-thumbnail",
    run,
    (integer("width", 1, 8192, required=True), integer("height", 1, 8192, required=True)),
    max_tile=512,
)

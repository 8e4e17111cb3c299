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
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, integer


def fit_inside(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down by one factor until both sides fit ``box``; never larger than ``size``."""
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, min(box[0], round(size[0] * scale))), max(1, min(box[1], round(size[1] * scale)))


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Shrink each input image (or the stage's ``source:`` upload) with Lanczos to fit the box."""
    box = (int(params["width"]), int(params["height"]))

    def reduce(image: Image.Image) -> Image.Image:
        size = fit_inside(image.size, box)
        return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)

    return edit_each(ctx, stage_sources(ctx, params, images), reduce)


STAGE = StageType(
    "reduce-thumbnail",
    run,
    (integer("width", 1, 8192, required=True), integer("height", 1, 8192, required=True)),
    max_tile=512,
)

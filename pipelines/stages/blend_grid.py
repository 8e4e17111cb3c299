"""``blend-grid``: lay the input images out in a grid and append the grid to them.

Params: ``width`` (columns) and ``height`` (rows), both required. Each cell has the first
image's size; the grid's metadata is the first image's, with the grid's pixel size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import blend_grid
from pipelines.imageops.upscale import with_image
from pipelines.stages.spec import StageType, integer


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Return the input images followed by their grid."""
    grid = blend_grid([item.image for item in images], int(params["width"]), int(params["height"]))
    ctx.on_step(1)
    return [*images, with_image(images[0], grid)]


def grid_size(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """The grid: ``width`` columns and ``height`` rows of the first image's size."""
    return size[0] * int(params["width"]), size[1] * int(params["height"])


STAGE = StageType(
    "blend-grid",
    run,
    (integer("width", 1, 16, required=True), integer("height", 1, 16, required=True)),
    size=grid_size,
)

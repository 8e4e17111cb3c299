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


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Return the input images followed by their grid."""
    if "width" not in params or "height" not in params:
        raise ValueError("blend-grid needs 'width' (columns) and 'height' (rows)")
    grid = blend_grid([item.image for item in images], int(params["width"]), int(params["height"]))
    ctx.on_step(1)
    return [*images, with_image(images[0], grid)]


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

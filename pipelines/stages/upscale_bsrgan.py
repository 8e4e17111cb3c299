"""``upscale-bsrgan``: upscale every image with a BSRGAN ONNX model, in tiles of at most 64 pixels.

Params: see :func:`pipelines.imageops.upscale.run_upscaling_stage`.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.upscale import run_upscaling_stage
from pipelines.stages.spec import StageType

#: The largest tile this stage feeds its model (contract §10.5).
MAX_TILE = 64


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Upscale each image with the model named by ``upscaling``."""
    return run_upscaling_stage(ctx, params, images, MAX_TILE)


STAGE = StageType("upscale-bsrgan", run, groups=("upscale",), max_tile=MAX_TILE, model="upscaling")

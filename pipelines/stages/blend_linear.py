"""``blend-linear``: mix each input image with the stage's source, ``alpha`` of the source.

Params: ``alpha`` (required, 0 to 1). Needs the upload ``source:<stage>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import blend_linear, stage_input
from pipelines.imageops.upscale import with_image


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """``image * (1 - alpha) + source * alpha`` for every input image."""
    if "alpha" not in params:
        raise ValueError("blend-linear needs an 'alpha' between 0 and 1")
    source = stage_input(ctx, params, "source")
    alpha = float(params["alpha"])
    blended = [with_image(item, blend_linear(item.image, source, alpha)) for item in images]
    ctx.on_step(1)
    return blended


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

"""``blend-linear``: mix each input image with the stage's source, ``alpha`` of the source.

Params: ``alpha`` (required, 0 to 1). Needs the upload ``source:<stage>``.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import blend_linear, stage_input
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """``image * (1 - alpha) + source * alpha`` for every input image."""
    source = stage_input(ctx, params, "source")
    alpha = float(params["alpha"])
    return edit_each(ctx, images, lambda image: blend_linear(image, source, alpha))


STAGE = StageType(
    "blend-linear", run, (number("alpha", 0, 1, required=True),), max_tile=512, needs=("source",)
)

"""``blend-mask``: composite the stage's source over each input image where its mask is white.

Needs the uploads ``source:<stage>`` and ``mask:<stage>``. Black in the mask keeps the input
image, white takes the source, grey mixes them; transparent mask pixels count as black.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import blend_mask, stage_input
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Blend ``source:<stage>`` into every input image through ``mask:<stage>``."""
    source = stage_input(ctx, params, "source")
    mask = stage_input(ctx, params, "mask")
    return edit_each(ctx, images, lambda image: blend_mask(image, source, mask))


STAGE = StageType("blend-mask", run, max_tile=512, needs=("source", "mask"))

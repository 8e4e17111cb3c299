"""``edit-filter``: run a source filter (contract §5.2) on every image; img2img's first stage.

Params: ``filter`` (a name of ``pipelines.imageops.filters.FILTERS_AVAILABLE``; others need models this
build does not ship and fail with a message naming them), ``seed`` (for the noise filter). Any
filter but ``none`` also records the filtered image as an extra output, as onnx-web does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.context import StageContext, StageImage
from pipelines.imageops.filters import FILTERS_AVAILABLE, apply_source_filter
from pipelines.imageops.upscale import with_image
from pipelines.stages.shared import MAX_SEED
from pipelines.stages.spec import StageType, choice, integer


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Replace each image by its filtered version."""
    name = str(params["filter"])
    rng = np.random.default_rng(int(params["seed"]))
    filtered = [with_image(item, apply_source_filter(name, item.image, rng)) for item in images]
    if name != "none":
        ctx.persist_extra([StageImage(item.image, {**item.metadata, "filter": name}) for item in filtered])
    ctx.on_step(1)
    return filtered


STAGE = StageType(
    "edit-filter",
    run,
    (choice("filter", FILTERS_AVAILABLE, "none"), integer("seed", 0, MAX_SEED, required=True)),
)

"""``edit-filter``: run a source filter (contract §5.2) on every image; img2img's first stage.

Params: ``filter`` (a name of ``pipelines.imageops.filters.FILTERS_BUILT``; the model-based ones run
the annotator model in ``<models>/filter/`` through the worker's session cache, and fail naming the
model when it is not installed), ``seed`` (for the noise filter). Any filter but ``none`` also
records the filtered image as an extra output, as onnx-web does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.context import StageContext, StageImage
from pipelines.imageops.annotators import Annotators
from pipelines.imageops.filters import FILTERS_BUILT, apply_source_filter
from pipelines.imageops.upscale import with_image
from pipelines.stages.shared import MAX_SEED
from pipelines.stages.spec import StageType, choice, integer


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Replace each image by its filtered version."""
    name = str(params["filter"])
    rng = np.random.default_rng(int(params["seed"]))
    annotators = Annotators(ctx.models_path, ctx.sessions)
    filtered = [with_image(item, apply_source_filter(name, item.image, rng, annotators)) for item in images]
    if name != "none":
        ctx.persist_extra([StageImage(item.image, {**item.metadata, "filter": name}) for item in filtered])
    ctx.on_step(1)
    return filtered


STAGE = StageType(
    "edit-filter",
    run,
    (choice("filter", FILTERS_BUILT, "none"), integer("seed", 0, MAX_SEED, required=True)),
)

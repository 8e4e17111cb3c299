"""``edit-filter``: run a source filter (contract §5.2) on every image; img2img's first stage.

Params: ``filter`` (a name of ``pipelines.imageops.filters.FILTERS_AVAILABLE``; others need models this
build does not ship and fail with a message naming them), ``seed`` (for the noise filter). Any
filter but ``none`` also records the filtered image as an extra output, as onnx-web does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.context import StageContext, StageImage
from pipelines.imageops.filters import apply_source_filter
from pipelines.imageops.upscale import with_image


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Replace each image by its filtered version."""
    name = str(params.get("filter", "none"))
    rng = np.random.default_rng(int(params.get("seed", 0)))
    filtered = [with_image(item, apply_source_filter(name, item.image, rng)) for item in images]
    if name != "none":
        ctx.persist_extra([StageImage(item.image, {**item.metadata, "filter": name}) for item in filtered])
    ctx.on_step(1)
    return filtered


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

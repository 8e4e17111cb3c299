"""``edit-expand``: prepare an inpaint/outpaint: fit the mask, grow the canvas, fill and filter.

Contract §8.3 step 1. Params: ``left``, ``right``, ``top``, ``bottom`` (border in pixels),
``fill_color``, ``noise_source`` (``pipelines.imageops.noise.NOISE_SOURCES``), ``mask_filter``
(``pipelines.imageops.masks.MASK_FILTERS``), ``target`` (the inpainting stage whose ``mask:<target>``
input this stage reads and replaces with the grown, filtered mask), ``seed`` (for the noise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.context import StageContext, StageImage
from pipelines.imageops.masks import MASK_FILTERS, expand_canvas, fit_mask
from pipelines.imageops.noise import NOISE_SOURCES
from pipelines.imageops.upscale import with_image
from pipelines.stages.shared import BORDER, MAX_SEED
from pipelines.stages.spec import StageType, choice, color, integer, text


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Grow every image by the border and hand the target stage the matching mask."""
    key = f"mask:{params['target']}"
    mask = ctx.inputs.get(key)
    if mask is None:
        raise ValueError(f"edit-expand needs the target stage's mask upload ({key})")
    border = {side: int(params[side]) for side in ("left", "right", "top", "bottom")}
    noise = NOISE_SOURCES[str(params["noise_source"])]
    mask_filter = MASK_FILTERS[str(params["mask_filter"])]
    rng = np.random.default_rng(int(params["seed"]))
    expanded = []
    for item in images:
        fitted = fit_mask(mask, item.image.size)
        image, grown = expand_canvas(
            item.image, fitted, border, noise, str(params["fill_color"]), mask_filter=mask_filter, rng=rng
        )
        expanded.append(with_image(item, image))
        ctx.inputs[key] = grown
    ctx.on_step(1)
    return expanded


def expanded_size(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """The image grown by the border."""
    return (
        size[0] + int(params["left"]) + int(params["right"]),
        size[1] + int(params["top"]) + int(params["bottom"]),
    )


STAGE = StageType(
    "edit-expand",
    run,
    (
        *BORDER,
        color("fill_color", "white"),
        choice("noise_source", tuple(NOISE_SOURCES), "histogram"),
        choice("mask_filter", tuple(MASK_FILTERS), "none"),
        text("target", 64, required=True),
        integer("seed", 0, MAX_SEED, required=True),
    ),
    size=expanded_size,
)

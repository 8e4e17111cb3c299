"""``source-noise``: make a noise image with one of the noise sources of ``pipelines.imageops.noise``.

Params: ``noise_source`` (default ``histogram``, the ``noise`` default of the image routes; any
name of ``GET /api/settings/noises``), ``width`` and ``height`` (default 512), ``fill_color``
(default white) and ``seed`` (default 0). With input images, each is replaced by noise made
from it (the histogram source follows its colours; onnx-web discarded the input the same way);
without any, one noise image is made from a blank canvas of ``fill_color``. Noise for several
images comes from one generator seeded by ``seed``, so a job reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.imageops.noise import NOISE_SOURCES, parse_color
from pipelines.imageops.upscale import with_image
from pipelines.stages.options import text, whole_number

DEFAULT_NOISE = "histogram"
DEFAULT_SIZE = 512
#: The size limits of image params (contract §3.2).
MIN_SIZE, MAX_SIZE = 1, 8192


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """One noise image per input image, or one noise image if there is none."""
    name = text(params, "noise_source", DEFAULT_NOISE)
    if name not in NOISE_SOURCES:
        raise ValueError(f"noise_source must be one of {', '.join(NOISE_SOURCES)}, got {name!r}")
    size = (
        whole_number(params, "width", DEFAULT_SIZE, low=MIN_SIZE, high=MAX_SIZE),
        whole_number(params, "height", DEFAULT_SIZE, low=MIN_SIZE, high=MAX_SIZE),
    )
    fill = text(params, "fill_color", "white")
    try:
        colour = parse_color(fill)
    except ValueError as err:
        raise ValueError(f"fill_color must be a colour name or #rrggbb, got {fill!r}") from err
    rng = np.random.default_rng(whole_number(params, "seed", 0, low=0))
    sources = images or [StageImage(Image.new("RGB", size, colour))]
    noise = [
        with_image(item, NOISE_SOURCES[name](item.image.convert("RGB"), size, (0, 0), colour, rng))
        for item in sources
    ]
    ctx.on_step(1)
    return noise


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

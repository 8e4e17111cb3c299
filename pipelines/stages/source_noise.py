"""``source-noise``: make a noise image with one of the noise sources of ``pipelines.imageops.noise``.

Params: ``noise_source`` (default ``histogram``, the ``noise`` default of the image routes; any
name of ``GET /api/settings/noises``), ``width`` and ``height`` (default 512), ``fill_color``
(default white) and ``seed`` (the chain's resolved seed). With input images, each is replaced by noise made
from it (the histogram source follows its colours; onnx-web discarded the input the same way);
without any, one noise image is made from a blank canvas of ``fill_color``. Noise for several
images comes from one generator seeded by ``seed``, so a job reproduces exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.imageops.noise import NOISE_SOURCES, parse_color
from pipelines.imageops.upscale import with_image
from pipelines.stages.shared import MAX_SEED
from pipelines.stages.spec import StageType, choice, color, integer, size_from_params


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """One noise image per input image, or one noise image if there is none."""
    name = str(params["noise_source"])
    size = (int(params["width"]), int(params["height"]))
    colour = parse_color(str(params["fill_color"]))
    rng = np.random.default_rng(int(params["seed"]))
    sources = images or [StageImage(Image.new("RGB", size, colour))]
    noise = [
        with_image(item, NOISE_SOURCES[name](item.image.convert("RGB"), size, (0, 0), colour, rng))
        for item in sources
    ]
    ctx.on_step(1)
    return noise


STAGE = StageType(
    "source-noise",
    run,
    (
        choice("noise_source", tuple(NOISE_SOURCES), "histogram"),
        color("fill_color", "white"),
        integer("seed", 0, MAX_SEED, required=True),
        integer("width", 1, 8192, 512),
        integer("height", 1, 8192, 512),
    ),
    max_tile=512,
    size=size_from_params,
)

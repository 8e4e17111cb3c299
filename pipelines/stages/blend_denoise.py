"""``blend-denoise`` and ``blend-denoise-fastnlmeans``: OpenCV non-local-means denoising.

Params: ``strength`` (OpenCV's filter strength ``h``, default 3).
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import denoise_nl_means
from pipelines.imageops.upscale import with_image
from pipelines.stages.spec import StageType, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Denoise every input image."""
    strength = float(params["strength"])
    denoised = []
    for item in images:
        ctx.check_cancelled()
        denoised.append(with_image(item, denoise_nl_means(item.image, strength)))
    ctx.on_step(1)
    return denoised


STAGE = StageType("blend-denoise", run, (number("strength", 0, 100, 3),))
#: onnx-web's other name for the same stage.
FASTNLMEANS = StageType("blend-denoise-fastnlmeans", run, (number("strength", 0, 100, 3),))

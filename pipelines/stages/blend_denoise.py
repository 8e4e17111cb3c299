"""``blend-denoise`` and ``blend-denoise-fastnlmeans``: OpenCV non-local-means denoising.

Params: ``strength`` (OpenCV's filter strength ``h``, default 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import DEFAULT_DENOISE_STRENGTH, denoise_nl_means
from pipelines.imageops.upscale import with_image


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Denoise every input image."""
    strength = float(params.get("strength", DEFAULT_DENOISE_STRENGTH))
    denoised = []
    for item in images:
        ctx.check_cancelled()
        denoised.append(with_image(item, denoise_nl_means(item.image, strength)))
    ctx.on_step(1)
    return denoised


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

"""``blend-denoise`` and ``blend-denoise-fastnlmeans``: OpenCV non-local-means denoising.

Params: ``strength`` (OpenCV's filter strength ``h``, default 3).
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.blend import denoise_nl_means
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Denoise every input image."""
    strength = float(params["strength"])
    return edit_each(ctx, images, lambda image: denoise_nl_means(image, strength))


STAGE = StageType("blend-denoise", run, (number("strength", 0, 100, 3),))
#: onnx-web's other name for the same stage.
FASTNLMEANS = StageType("blend-denoise-fastnlmeans", run, (number("strength", 0, 100, 3),))

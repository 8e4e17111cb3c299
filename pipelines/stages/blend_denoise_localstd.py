"""``blend-denoise-localstd``: replace faint stray pixels with their neighbourhood's median.

Params: ``strength`` (default 5) and ``range`` (default 4). A pixel is stray when, in some
channel, it differs from the median of its 5x5 neighbourhood by more than the neighbourhood's
standard deviation plus ``strength``, but by less than that deviation plus ``strength * range``:
speckle, not detail (larger jumps are edges and stay). Every channel of a stray pixel takes the
median. This is onnx-web's local-deviation denoise (added for SDXL's speckles), with an odd
window so each pixel sits at its centre, all three channels checked (onnx-web skipped blue),
and numpy instead of a Python loop per pixel, which made the original "very slow".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, integer, number

#: Side of the neighbourhood each pixel is compared with.
WINDOW = 5


def denoise_local_std(image: Image.Image, strength: float, spread: float) -> Image.Image:
    """``image`` with its stray pixels (see the module docstring) set to their local median."""
    import cv2  # a worker dependency: the api imports this module for its declaration only

    pixels = np.asarray(image.convert("RGB"))
    median = cv2.medianBlur(pixels, WINDOW).astype(np.float64)
    values = pixels.astype(np.float64)
    # Replicated borders, as medianBlur uses, so edge pixels are judged on the same neighbours.
    mean = cv2.blur(values, (WINDOW, WINDOW), borderType=cv2.BORDER_REPLICATE)
    mean_square = cv2.blur(values * values, (WINDOW, WINDOW), borderType=cv2.BORDER_REPLICATE)
    deviation = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    distance = np.abs(values - median)
    inside = (distance > deviation + strength) & (distance < deviation + strength * spread)
    stray = np.any(inside, axis=2, keepdims=True)
    return Image.fromarray(np.where(stray, median, values).astype(np.uint8))


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Denoise every input image."""
    strength = float(params["strength"])
    spread = float(params["range"])
    return edit_each(ctx, images, lambda image: denoise_local_std(image, strength, spread))


STAGE = StageType("blend-denoise-localstd", run, (number("strength", 0, 100, 5), integer("range", 1, 64, 4)))

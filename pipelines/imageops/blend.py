"""Blending images: masks, linear mixes, grids and denoising (contract §10.5).

Pure functions on PIL images; the ``blend-*`` stages wrap them. Stage sources and masks of a
different size than the image they blend into are resized to it, since uploads rarely match the
generated size exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import StageContext

#: ``blend-denoise``'s default filter strength (OpenCV's ``h``), as onnx-web uses it.
DEFAULT_DENOISE_STRENGTH = 3.0
#: OpenCV's recommended non-local-means window sizes for colour images.
DENOISE_TEMPLATE_WINDOW = 7
DENOISE_SEARCH_WINDOW = 21


def stage_input(ctx: StageContext, params: Mapping[str, Any], kind: str) -> Image.Image:
    """The upload ``<kind>:<stage name>`` (``source`` or ``mask``); missing is an error naming it."""
    key = f"{kind}:{params.get('stage_name', '')}"
    if key not in ctx.inputs:
        raise ValueError(f"this stage needs an uploaded image {key!r}")
    return ctx.inputs[key]


def mask_to_alpha(mask: Image.Image) -> Image.Image:
    """An ``L`` mask from any upload: transparent pixels count as black (keep), as onnx-web reads them."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(backdrop, rgba).convert("L")
    return mask.convert("L")


def _matched(
    image: Image.Image, size: tuple[int, int], resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def blend_mask(base: Image.Image, source: Image.Image, mask: Image.Image) -> Image.Image:
    """``source`` where ``mask`` is white, ``base`` where it is black, a linear mix where grey."""
    base = base.convert("RGB")
    # Bilinear for the mask: Lanczos rings around its hard edges and would leak the source.
    alpha = _matched(mask_to_alpha(mask), base.size, Image.Resampling.BILINEAR)
    return Image.composite(_matched(source.convert("RGB"), base.size), base, alpha)


def blend_linear(base: Image.Image, source: Image.Image, alpha: float) -> Image.Image:
    """``base * (1 - alpha) + source * alpha``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"blend alpha must be between 0 and 1, got {alpha}")
    base = base.convert("RGB")
    return Image.blend(base, _matched(source.convert("RGB"), base.size), alpha)


def blend_grid(images: list[Image.Image], columns: int, rows: int) -> Image.Image:
    """Paste ``images`` row by row into a ``columns`` x ``rows`` grid of cells the first image's size.

    Missing cells stay black; images beyond the last cell are left out; images of another size
    are resized to the cell so they cannot spill into their neighbours.
    """
    if columns < 1 or rows < 1:
        raise ValueError(f"a grid needs at least one column and one row, got {columns}x{rows}")
    if not images:
        raise ValueError("a grid needs at least one image")
    cell = images[0].size
    grid = Image.new("RGB", (cell[0] * columns, cell[1] * rows))
    for index, image in enumerate(images[: columns * rows]):
        row, column = divmod(index, columns)
        grid.paste(_matched(image.convert("RGB"), cell), (column * cell[0], row * cell[1]))
    return grid


def denoise_nl_means(image: Image.Image, strength: float = DEFAULT_DENOISE_STRENGTH) -> Image.Image:
    """OpenCV's fast non-local-means denoising for colour images, ``strength`` as its ``h``."""
    import cv2  # a worker dependency; the api never blends

    # OpenCV expects BGR: its luminance/colour split would otherwise treat red as blue.
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    denoised = cv2.fastNlMeansDenoisingColored(
        bgr, None, strength, strength, DENOISE_TEMPLATE_WINDOW, DENOISE_SEARCH_WINDOW
    )
    return Image.fromarray(np.ascontiguousarray(denoised[..., ::-1]))

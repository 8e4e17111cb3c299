"""Mask filters and the canvas helpers of inpaint and outpaint (contract §4.6, §5.2, §8.3).

Masks are ``L`` images: white is repainted, black is kept, grey mixes. A mask filter places the
mask on a canvas of the target size, where everything outside the mask is white (new area is
always repainted), and may soften it::

    mask_filter(mask, dims, origin) -> L image of size ``dims``
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from pipelines.imageops.noise import Color, NoiseSource, Size, parse_color

MaskFilter = Callable[[Image.Image, Size, Size], Image.Image]

#: The gaussian filters blur and combine this many times, with this blur radius.
GAUSSIAN_ROUNDS = 3
GAUSSIAN_RADIUS = 5


def mask_filter_none(mask: Image.Image, dims: Size, origin: Size) -> Image.Image:
    """The mask pasted at ``origin`` on a white canvas of ``dims``."""
    canvas = Image.new("L", dims, 255)
    canvas.paste(mask.convert("L"), origin)
    return canvas


def mask_filter_gaussian_multiply(mask: Image.Image, dims: Size, origin: Size) -> Image.Image:
    """Blur and multiply three times: dark areas grow and soften, so more of the image is kept."""
    return _blend_with_blur(mask_filter_none(mask, dims, origin), ImageChops.multiply)


def mask_filter_gaussian_screen(mask: Image.Image, dims: Size, origin: Size) -> Image.Image:
    """Blur and screen three times: white areas grow and soften, so more of the image is repainted."""
    return _blend_with_blur(mask_filter_none(mask, dims, origin), ImageChops.screen)


def _blend_with_blur(
    mask: Image.Image, combine: Callable[[Image.Image, Image.Image], Image.Image]
) -> Image.Image:
    for _ in range(GAUSSIAN_ROUNDS):
        mask = combine(mask, mask.filter(ImageFilter.GaussianBlur(GAUSSIAN_RADIUS)))
    return mask


#: The mask filters by API name, in the order ``GET /api/settings/filters`` lists them.
MASK_FILTERS: dict[str, MaskFilter] = {
    "none": mask_filter_none,
    "gaussian-multiply": mask_filter_gaussian_multiply,
    "gaussian-screen": mask_filter_gaussian_screen,
}


def fit_mask(mask: Image.Image, size: Size) -> Image.Image:
    """Scale ``mask`` to a square of the larger side of ``size``, then crop it to ``size``.

    This is how onnx-web lines an uploaded mask up with its source: the GUI draws masks on a
    square canvas, so a square mask covers a non-square source exactly, anchored top-left.
    Bilinear rather than Lanczos, which rings around hard mask edges and turns kept black grey.
    """
    side = max(size)
    return mask.convert("L").resize((side, side), Image.Resampling.BILINEAR).crop((0, 0, *size))


def expand_canvas(
    source: Image.Image,
    mask: Image.Image,
    border: dict[str, int],
    noise_source: NoiseSource,
    fill_color: Color,
    mask_filter: MaskFilter = mask_filter_none,
    rng: np.random.Generator | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Grow ``source`` by ``border`` (``left``, ``right``, ``top``, ``bottom``) for outpainting.

    The mask is placed by ``mask_filter`` with the new area white; wherever the result is white
    (the border and the user's masked area) the image is filled with ``noise_source`` multiplied
    by ``fill_color``, so the model starts from noise there, tinted by the fill colour, rather
    than from flat colour. Returns the new image and its ``L`` mask; with no border, the image
    keeps its size and only the masked area is filled.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    left, right = border.get("left", 0), border.get("right", 0)
    top, bottom = border.get("top", 0), border.get("bottom", 0)
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"outpaint borders must not be negative, got {border}")
    dims = (source.width + left + right, source.height + top + bottom)
    origin = (left, top)
    canvas = Image.new("RGB", dims, parse_color(fill_color))
    canvas.paste(source.convert("RGB"), origin)
    full_mask = mask_filter(mask, dims, origin)
    noise = noise_source(source.convert("RGB"), dims, origin, fill_color, rng).convert("RGB")
    tinted = ImageChops.multiply(noise, Image.new("RGB", dims, parse_color(fill_color)))
    return Image.composite(tinted, canvas, full_mask), full_mask

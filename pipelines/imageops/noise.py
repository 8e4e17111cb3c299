"""Noise sources: what fills outpaint borders, masked areas and tiles that stick out of the image.

Every source has the same signature (onnx-web's ``image/noise_source.py``, contract §5.4)::

    source(image, dims, origin, fill, rng) -> Image of size ``dims``

``image`` is the picture being extended, ``origin`` is where its top-left corner sits on the
``dims`` canvas, ``fill`` is a PIL colour and ``rng`` the only source of randomness, so a seeded
generator reproduces a job exactly. All work is vectorised numpy; onnx-web looped over pixels in
Python, which was slow for big borders.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageColor, ImageFilter

Size = tuple[int, int]
Color = str | tuple[int, int, int]
NoiseSource = Callable[[Image.Image, Size, Size, Color, np.random.Generator], Image.Image]

#: Mean and standard deviation of the ``normal`` source, in 8-bit levels.
NORMAL_MEAN = 128.0
NORMAL_STD = 32.0
#: The ``gaussian`` source blurs its canvas this many times with this radius.
GAUSSIAN_ROUNDS = 3
GAUSSIAN_RADIUS = 5


def parse_color(fill: Color) -> tuple[int, int, int]:
    """An RGB triple from a PIL colour string or triple; an unknown name is a ``ValueError``."""
    if isinstance(fill, str):
        return ImageColor.getrgb(fill)[:3]
    return (int(fill[0]), int(fill[1]), int(fill[2]))


def noise_fill_edge(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """A canvas of the fill colour with ``image`` pasted in, so only the new border is flat."""
    canvas = Image.new("RGB", dims, parse_color(fill))
    canvas.paste(image.convert("RGB"), origin)
    return canvas


def noise_fill_mask(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """A canvas of the fill colour alone."""
    return Image.new("RGB", dims, parse_color(fill))


def noise_gaussian(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """Uniform noise with ``image`` pasted in, blurred so the border takes on the image's colours."""
    canvas = noise_uniform(image, dims, origin, fill, rng)
    canvas.paste(image.convert("RGB"), origin)
    for _ in range(GAUSSIAN_ROUNDS):
        canvas = canvas.filter(ImageFilter.GaussianBlur(GAUSSIAN_RADIUS))
    return canvas


def noise_histogram(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """Per-channel noise whose levels follow the colour histogram of ``image``.

    Channels are drawn independently, so the noise has the image's palette per channel but not
    its colour correlations: onnx-web's behaviour, and enough to seed a diffusion model.
    """
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    width, height = dims
    channels = []
    for channel in range(3):
        counts = np.bincount(pixels[:, channel], minlength=256).astype(np.float64)
        channels.append(rng.choice(256, size=(height, width), p=counts / counts.sum()))
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def noise_normal(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """Per-pixel, per-channel Gaussian noise with mean 128 and standard deviation 32."""
    width, height = dims
    levels = rng.normal(NORMAL_MEAN, NORMAL_STD, size=(height, width, 3))
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))


def noise_uniform(
    image: Image.Image, dims: Size, origin: Size, fill: Color, rng: np.random.Generator
) -> Image.Image:
    """Per-pixel, per-channel noise, every level from 0 to 255 equally likely."""
    width, height = dims
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


#: The noise sources by API name, in the order ``GET /api/settings/noises`` lists them.
NOISE_SOURCES: dict[str, NoiseSource] = {
    "fill-edge": noise_fill_edge,
    "fill-mask": noise_fill_mask,
    "gaussian": noise_gaussian,
    "histogram": noise_histogram,
    "normal": noise_normal,
    "uniform": noise_uniform,
}

"""The images pipeline tests feed stages and models, and the pixel levels they compare."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of ``size`` with uniform random levels from ``default_rng(seed)``."""
    levels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(levels)


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth colour gradient: structure the VAE can keep, so how far an image moves shows."""
    y, x = np.mgrid[0:height, 0:width]
    levels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(levels.astype(np.uint8))


def mask_image(width: int = 64, height: int = 48) -> Image.Image:
    """White (repaint) in a box off the latent grid, so resizing and binarizing matter."""
    mask = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(mask).rectangle((13, 9, 45, 37), fill="white")
    return mask


def pixels(images: list[Image.Image]) -> np.ndarray:
    """Images as one ``(count, height, width, 3)`` array of levels, signed so that differences are."""
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)

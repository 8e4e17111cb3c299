"""Deterministic input images for the end-to-end tests and the release references."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gradient(width: int = 128, height: int = 96) -> Image.Image:
    """Red grows left to right, green top to bottom, blue stays 96."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 96.0),
        ],
        axis=2,
    )
    return Image.fromarray(pixels.astype(np.uint8))


def half_mask(width: int = 128, height: int = 96) -> Image.Image:
    """Black (kept) on the left half, white (painted) on the right."""
    mask = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width, height), fill="white")
    return mask

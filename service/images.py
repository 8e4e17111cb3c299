"""Decoding of uploaded images: a format allowlist and a pixel cap, so uploads cannot bomb memory."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from service.errors import InvalidParams, PayloadTooLarge

#: Only these decoders ever see untrusted bytes (exotic decoders have had bombs and CVEs).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")


#: The smallest side an uploaded image may have: diffusion works on an 8-pixel latent grid, and a
#: smaller image would reach a worker only to fail there.
MIN_UPLOAD_SIDE = 8


def open_upload(data: bytes, field: str, *, max_pixels: int) -> Image.Image:
    """Read one uploaded image's header only: its format, and its size against the limits.

    No pixel is decoded, so an upload that no stage uses costs next to nothing.
    """
    if not data:
        raise InvalidParams(field, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PayloadTooLarge(f"{field}: image is too large to decode") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidParams(field, f"must be a PNG, JPEG or WebP image ({err})") from err
    if image.width * image.height > max_pixels:
        size = f"{image.width}x{image.height}"
        raise PayloadTooLarge(f"{field}: image is {size}, larger than {max_pixels} pixels")
    if min(image.size) < MIN_UPLOAD_SIDE:
        raise InvalidParams(
            field,
            f"must be at least {MIN_UPLOAD_SIDE}x{MIN_UPLOAD_SIDE} pixels, got {image.width}x{image.height}",
        )
    return image


def load_upload(image: Image.Image, field: str) -> Image.Image:
    """Decode the pixels of an image ``open_upload`` accepted; a truncated or corrupt file is a 400."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidParams(field, f"must be a PNG, JPEG or WebP image ({err})") from err
    return image


def decode_upload(data: bytes, field: str, *, max_pixels: int) -> Image.Image:
    """Decode one uploaded image, refusing other formats, broken files and images out of bounds."""
    return load_upload(open_upload(data, field, max_pixels=max_pixels), field)


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of ``image`` (uploads are stored re-encoded, never as received)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

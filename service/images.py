"""Decoding of uploaded images: a format allowlist and a pixel cap, so uploads cannot bomb memory."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

from service.errors import InvalidParams, PayloadTooLarge

#: Only these decoders ever see untrusted bytes (exotic decoders have had bombs and CVEs).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
#: The modes an upload is stored in as it came (Pillow writes them as PNG); others, like a CMYK
#: JPEG's, are converted to RGB (RGBA with an alpha channel) when decoded.
PNG_MODES = ("1", "L", "LA", "I;16", "P", "RGB", "RGBA")


#: The smallest side an uploaded image may have: diffusion works on an 8-pixel latent grid, and a
#: smaller image would reach a worker only to fail there.
MIN_UPLOAD_SIDE = 8
#: The longest side an upload may have: the largest width or height a request may ask for
#: (``params.json``). Within the pixel cap, a 50000x8 strip would still be cut into hundreds of tiles.
MAX_UPLOAD_SIDE = 8192


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
        # PIL's text names its internals (``<_io.BytesIO object at 0x…>``), never the client's file.
        raise InvalidParams(field, "must be a PNG, JPEG or WebP image; this file is none of them") from err
    if image.width * image.height > max_pixels:
        size = f"{image.width}x{image.height}"
        raise PayloadTooLarge(f"{field}: image is {size}, larger than {max_pixels} pixels")
    if max(image.size) > MAX_UPLOAD_SIDE:
        raise InvalidParams(
            field, f"must be at most {MAX_UPLOAD_SIDE} pixels a side, got {image.width}x{image.height}"
        )
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
        raise InvalidParams(field, "must be a PNG, JPEG or WebP image; its pixels are corrupt") from err
    if image.mode in PNG_MODES:
        return image
    return image.convert("RGBA" if image.mode.endswith("A") else "RGB")


def decode_upload(data: bytes, field: str, *, max_pixels: int) -> Image.Image:
    """Decode one uploaded image, refusing other formats, broken files and images out of bounds."""
    return load_upload(open_upload(data, field, max_pixels=max_pixels), field)


def encode_png(image: Image.Image, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Lossless PNG bytes of ``image`` (uploads are stored re-encoded, never as received), with
    ``metadata`` (what ``upload_metadata`` kept of the upload's) as its maker note."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_text("maker note", json.dumps(metadata, sort_keys=True))
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()

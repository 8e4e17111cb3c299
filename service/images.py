"""Decoding of uploaded images: a format allowlist and a pixel cap, so uploads cannot bomb memory."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from service.errors import InvalidParams, PayloadTooLarge

#: Only these decoders ever see untrusted bytes (exotic decoders have had bombs and CVEs).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")


def decode_upload(data: bytes, field: str, *, max_pixels: int) -> Image.Image:
    """Decode one uploaded image, refusing other formats, broken files and oversized images."""
    if not data:
        raise InvalidParams(field, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            # Check the declared size before decoding a single pixel.
            if image.width * image.height > max_pixels:
                raise PayloadTooLarge(
                    f"{field}: image is {image.width}x{image.height}, larger than {max_pixels} pixels"
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PayloadTooLarge(f"{field}: image is too large to decode") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidParams(field, f"must be a PNG, JPEG or WebP image ({err})") from err
    return image


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of ``image`` (uploads are stored re-encoded, never as received)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

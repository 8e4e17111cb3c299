"""Metadata embedded in JPEG and WebP outputs: read back as written, and bounded where JPEG bounds it."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from pipelines.imageops.metadata import (
    EXIF_MAKER_NOTE,
    EXIF_USER_COMMENT,
    JPEG_MAX_EXIF,
    encode_image,
    read_metadata,
)


def metadata(prompt: str) -> dict[str, Any]:
    return {
        "params": {"prompt": prompt, "negative_prompt": "blurry " * 10, "seed": 77, "steps": 25},
        "models": [{"name": "stable-diffusion-onnx-v1-5", "hash": "ABC", "weight": 1.0}],
        "size": {"width": 16, "height": 16},
    }


def comment(image: Image.Image) -> str:
    raw = image.getexif()[EXIF_USER_COMMENT]
    assert raw.startswith(b"UNICODE\x00")
    return str(raw[8:].decode("utf-16-be"))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_short_prompt_s_metadata_reads_back_whole(fmt: str) -> None:
    written = metadata("a cat in a hat")
    data = encode_image(Image.new("RGB", (16, 16)), written, fmt=fmt, server_version="v1")
    image = Image.open(io.BytesIO(data))
    assert read_metadata(image) == written
    assert comment(image).startswith("a cat in a hat\nNegative prompt: blurry")


def test_a_jpeg_of_the_longest_prompt_keeps_what_fits_instead_of_failing() -> None:
    prompt = "a very long prompt, " * 1000  # 20,000 characters, the api's limit
    data = encode_image(Image.new("RGB", (16, 16)), metadata(prompt), fmt="jpeg", server_version="v1")
    image = Image.open(io.BytesIO(data))
    assert len(image.getexif().tobytes()) <= JPEG_MAX_EXIF
    # The maker note (in the sidecar JSON too) is left out; the parameters keep their last line.
    assert EXIF_MAKER_NOTE not in image.getexif() and read_metadata(image) is None
    text = comment(image)
    assert prompt.startswith(text.split("\n")[0]) and len(text.split("\n")[0]) > 1000
    assert "Seed: 77" in text.split("\n")[-1] and "Model hash: ABC" in text


def test_a_webp_has_room_for_the_longest_prompt_whole() -> None:
    written = metadata("a very long prompt, " * 1000)
    data = encode_image(Image.new("RGB", (16, 16)), written, fmt="webp", server_version="v1")
    assert read_metadata(Image.open(io.BytesIO(data))) == written

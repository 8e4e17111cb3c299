"""Output metadata: embedded in PNG, JPEG and WebP and read back as written, bounded where JPEG bounds
it, and what an upload of an output may hand on."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from pipelines.imageops.metadata import (
    EXIF_MAKER_NOTE,
    EXIF_USER_COMMENT,
    JPEG_MAX_EXIF,
    a1111_parameters,
    encode_image,
    read_metadata,
    upload_metadata,
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


def with_note(note: str) -> Image.Image:
    """A PNG read back with ``note`` as its maker note, as an upload arrives."""
    info = PngImagePlugin.PngInfo()
    info.add_text("maker note", note)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_an_upload_hands_on_the_params_and_models_it_was_made_with() -> None:
    written = {**metadata("a cat"), "input_size": {"width": 16, "height": 16}, "outputs": ["x_0.png"]}
    data = encode_image(Image.new("RGB", (16, 16)), written, fmt="png", server_version="v1")
    kept = upload_metadata(Image.open(io.BytesIO(data)))
    # Not its sizes: the upload itself is the input of the job made from it.
    assert kept == {"params": written["params"], "models": written["models"]}


@pytest.mark.parametrize(
    ("note", "kept"),
    [
        ("not json", None),
        ("[1, 2]", None),
        ("[" * 30_000 + "]" * 30_000, None),  # too deep to parse
        ('{"params": {"seed": ' + "1" * 5000 + "}}", None),  # past Python's integer digits
        (
            json.dumps({"params": {"prompt": None, "seed": "x", "steps": True, "model": 5, "cfg": 1.5}}),
            {"params": {"cfg": 1.5}},
        ),
        (json.dumps({"params": {"seed": 1, "note": "x" * 70_000}}), None),  # larger than any of ours
        (json.dumps({"params": "a string"}), None),
        (
            json.dumps({"params": {"seed": 7, "nested": {"a": 1}, "list": [1], "prompt": "ok"}}),
            {"params": {"seed": 7, "prompt": "ok"}},
        ),
        ('{"params": {"cfg": NaN, "eta": Infinity, "steps": 3}}', {"params": {"steps": 3}}),
        (
            json.dumps(
                {
                    "models": [
                        {"name": "m", "hash": "H", "weight": 1, "extra": "dropped"},
                        {"name": 5},
                        {"name": "n", "weight": True},
                        "not an entry",
                    ],
                    "input_size": {"width": -1, "height": 5},
                    "size": {"width": 1, "height": 1},
                }
            ),
            {"models": [{"name": "m", "hash": "H", "weight": 1}]},
        ),
    ],
)
def test_a_stranger_s_metadata_keeps_only_checked_values_of_our_shape(note: str, kept: Any) -> None:
    assert upload_metadata(with_note(note)) == kept


def test_the_parameters_list_a_lora_s_hash_over_an_inversion_of_the_same_name() -> None:
    written = {
        **metadata("a cat"),
        "loras": [{"name": "detail", "hash": "LORA", "weight": 1.0}],
        "inversions": [{"name": "detail", "hash": "INVERSION", "weight": 1.0}],
    }
    text = a1111_parameters(written, "v1")
    assert text.endswith('Hashes: {"stable-diffusion-onnx-v1-5": "ABC", "detail": "LORA"}')


def test_a_jpeg_whose_hash_lists_alone_overflow_its_exif_is_still_written() -> None:
    entries = [{"name": "n" * 250 + str(index), "hash": "h" * 250, "weight": 1.0} for index in range(32)]
    written = {**metadata("a cat"), "models": entries, "loras": entries, "inversions": entries}
    data = encode_image(Image.new("RGB", (16, 16)), written, fmt="jpeg", server_version="v1")
    image = Image.open(io.BytesIO(data))
    assert image.size == (16, 16) and len(image.getexif().tobytes()) <= JPEG_MAX_EXIF

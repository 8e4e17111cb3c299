"""The parallel PNG writer: files that libpng and Pillow both read back exactly, text as Pillow's."""

from __future__ import annotations

import io
import multiprocessing
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from bench.gpu import smooth_image
from pipelines.imageops.metadata import encode_image
from pipelines.imageops.png import SLICE_BYTES, deflate, encode_png

SHAPES = {"L": (), "RGB": (3,), "RGBA": (4,)}


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, *SHAPES[mode]), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def chunk_types(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order, each one's CRC checked."""
    kinds, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        offset += 12 + length
    return kinds


@pytest.mark.parametrize("mode", sorted(SHAPES))
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (512, 512), (701, 523)])
def test_every_pixel_reads_back_with_pillow_and_with_libpng(mode: str, size: tuple[int, int]) -> None:
    image = random_image(mode, *size)
    data = encode_png(image)

    assert chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == mode and decoded.size == size
        assert np.array_equal(np.asarray(decoded), np.asarray(image))
    by_libpng = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert by_libpng is not None, "libpng refused the file"
    expected = np.asarray(image)
    if mode == "RGB":
        expected = expected[:, :, ::-1]
    elif mode == "RGBA":
        expected = expected[:, :, [2, 1, 0, 3]]
    assert np.array_equal(by_libpng, expected)


@pytest.mark.parametrize("length", [0, 1, SLICE_BYTES - 1, SLICE_BYTES, SLICE_BYTES + 1, 3 * SLICE_BYTES + 5])
def test_slices_deflated_apart_make_one_zlib_stream(length: int) -> None:
    data = np.random.default_rng(length).integers(0, 4, length, dtype=np.uint8).tobytes()

    assert zlib.decompress(deflate(data)) == data


def test_text_is_read_back_as_pillow_writes_it_latin1_and_not() -> None:
    text = [("make", "onnx-web"), ("parameters", "a café at dusk\nNegative prompt: 東京 ✓")]
    image = random_image("RGB", 16, 16)

    ours = encode_png(image, text)
    info = PngImagePlugin.PngInfo()
    for key, value in text:
        info.add_text(key, value)
    theirs = io.BytesIO()
    image.save(theirs, format="PNG", pnginfo=info)

    with Image.open(io.BytesIO(ours)) as decoded:
        assert decoded.text == dict(text)  # type: ignore[attr-defined]
    text_chunks = [kind for kind in chunk_types(ours) if kind in (b"tEXt", b"iTXt")]
    assert text_chunks == [kind for kind in chunk_types(theirs.getvalue()) if kind in (b"tEXt", b"iTXt")]
    assert text_chunks == [b"tEXt", b"iTXt"]


def test_encode_image_writes_the_same_pixels_and_metadata_as_pillow_did() -> None:
    image = smooth_image(256)
    metadata = {"params": {"prompt": "a lighthouse, 灯台", "steps": 30, "seed": 7}}

    ours = encode_image(image, metadata, fmt="png", server_version="1.2.3")
    pillows = encode_image(image, metadata, fmt="png", server_version="1.2.3", png_writer="pillow")
    with Image.open(io.BytesIO(ours)) as mine, Image.open(io.BytesIO(pillows)) as reference:
        assert np.array_equal(np.asarray(mine), np.asarray(reference))
        assert mine.text == reference.text  # type: ignore[attr-defined]
        assert "灯台" in mine.text["parameters"]  # type: ignore[attr-defined]


def test_a_photo_like_image_is_at_most_a_tenth_larger_than_pillows_file() -> None:
    image = smooth_image(512)

    ours = encode_image(image, None, fmt="png", server_version="x")
    pillows = encode_image(image, None, fmt="png", server_version="x", png_writer="pillow")
    assert len(ours) <= 1.10 * len(pillows)


def test_modes_it_does_not_write_go_to_pillow() -> None:
    image = random_image("L", 8, 8).convert("P")

    with pytest.raises(ValueError, match="modes"):
        encode_png(image)
    data = encode_image(image, None, fmt="png", server_version="x")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == "P"
    with pytest.raises(ValueError, match="png_writer"):
        encode_image(image, None, fmt="png", server_version="x", png_writer="fast")


def _encode_in_child(queue: multiprocessing.Queue[bytes]) -> None:  # type: ignore[type-arg]
    queue.put(encode_png(random_image("RGB", 700, 600)))


def test_a_process_forked_after_encoding_encodes_with_threads_of_its_own() -> None:
    encode_png(random_image("RGB", 700, 600))  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_encode_in_child, args=(queue,))
    child.start()
    try:
        data = queue.get(timeout=30)  # with the parent's pool (threads the child lacks) it would hang
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
    with Image.open(io.BytesIO(data)) as decoded:
        assert np.array_equal(np.asarray(decoded), np.asarray(random_image("RGB", 700, 600)))

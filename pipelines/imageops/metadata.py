"""Output encoding with onnx-web's embedded metadata (contract §7.2, §7.3).

PNG outputs carry text chunks ``make``, ``maker note`` (the metadata JSON), ``model`` (the server
version) and ``parameters`` (an AUTOMATIC1111-style string, so Civitai and other tools read
them). JPEG and WebP carry the same in EXIF (a JPEG whose EXIF would outgrow its one segment drops
the maker note, which the sidecar JSON holds, and then shortens the prompts it repeats). Thumbnails
carry nothing.

PNGs are written by ``pipelines.imageops.png`` (rows filtered with Up in numpy, deflated with
zlib's Huffman-only strategy on several threads): 4-8x faster than Pillow's writer for files 0-6%
larger (``docs/gpu.md``; ``bench.encodings``). ``png_writer="pillow"`` writes them with Pillow,
with ``png_strategy`` and ``png_level``: ``zlib.Z_HUFFMAN_ONLY`` (the default before) or
``zlib.Z_FILTERED`` at level 6 (Pillow's own default). The pixels and metadata are the same in
every case.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

from pipelines.context import StageImage
from pipelines.imageops.png import COLOUR_TYPES, encode_png

TOOL = "onnx-web"
EXIF_MAKE = 0x010F
EXIF_MODEL = 0x0110
EXIF_MAKER_NOTE = 0x927C
EXIF_USER_COMMENT = 0x9286
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
#: The most EXIF a JPEG holds: one APP1 marker segment (Pillow's ``MAX_BYTES_IN_MARKER``).
JPEG_MAX_EXIF = 65533
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
#: zlib strategy of PNGs written by Pillow: no match search, so encoding costs little more than filtering.
PNG_ZLIB_STRATEGY = zlib.Z_HUFFMAN_ONLY
#: "parallel": ``pipelines.imageops.png`` (modes L, RGB, RGBA; others go to Pillow); "pillow".
PNG_WRITERS = ("parallel", "pillow")


def a1111_parameters(metadata: Mapping[str, Any], server_version: str) -> str:
    """The three-line parameter string AUTOMATIC1111 writes, from our metadata JSON."""
    params = metadata.get("params", {})
    size = metadata.get("input_size") or metadata.get("size") or {}
    models = metadata.get("models") or [{}]
    base = models[0]
    hashes = {
        entry["name"]: entry.get("hash", "unknown")
        # In onnx-web's order: where a LoRA and an inversion share a name, the LoRA's hash is listed.
        for entry in [*models, *metadata.get("inversions", []), *metadata.get("loras", [])]
        if "name" in entry
    }
    fields = [
        f"Steps: {params.get('steps', '')}",
        f"Sampler: {params.get('scheduler', '')}",
        f"CFG scale: {params.get('cfg', '')}",
        f"Seed: {params.get('seed', '')}",
        f"Size: {size.get('width', 0)}x{size.get('height', 0)}",
        f"Model hash: {base.get('hash', 'unknown')}",
        f"Model: {base.get('name', params.get('model', ''))}",
        f"Tool: {TOOL}",
        f"Version: {server_version}",
        f'Inversion hashes: "{_network_hashes(metadata.get("inversions", []))}"',
        f'Lora hashes: "{_network_hashes(metadata.get("loras", []))}"',
        f"Hashes: {json.dumps(hashes)}",
    ]
    return "\n".join(
        [
            str(params.get("prompt") or ""),
            f"Negative prompt: {params.get('negative_prompt') or ''}",
            ", ".join(fields),
        ]
    )


def _network_hashes(networks: list[Mapping[str, Any]]) -> str:
    return ",".join(f"{entry.get('name')}: {entry.get('hash', 'unknown')}" for entry in networks)


def encode_image(
    image: Image.Image,
    metadata: Mapping[str, Any] | None,
    *,
    fmt: str,
    server_version: str,
    png_writer: str = "parallel",
    png_strategy: int = PNG_ZLIB_STRATEGY,
    png_level: int = zlib.Z_DEFAULT_COMPRESSION,
) -> bytes:
    """Encode ``image`` as ``fmt`` (png, jpeg, webp), embedding ``metadata`` when given.

    ``png_writer`` picks the PNG writer (``PNG_WRITERS``); ``png_strategy`` (a ``zlib.Z_*``
    strategy) and ``png_level`` (zlib 0-9) apply to Pillow's.
    """
    if png_writer not in PNG_WRITERS:
        raise ValueError(f"png_writer must be one of {PNG_WRITERS}, not {png_writer!r}")
    pil_format = PIL_FORMATS[fmt]
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    text: list[tuple[str, str]] = []
    if metadata is not None:
        note = json.dumps(metadata, sort_keys=True)
        parameters = a1111_parameters(metadata, server_version)
        if pil_format == "PNG":
            text = [
                ("make", TOOL),
                ("maker note", note),
                ("model", server_version),
                ("parameters", parameters),
            ]
        else:
            exif = Image.Exif()
            exif[EXIF_MAKE] = TOOL
            exif[EXIF_MODEL] = server_version
            exif[EXIF_MAKER_NOTE] = _user_comment(note)
            exif[EXIF_USER_COMMENT] = _user_comment(parameters)
            if pil_format == "JPEG":
                _fit_jpeg_exif(exif, metadata, server_version)
            options["exif"] = exif
    if pil_format == "JPEG":
        image = image.convert("RGB")
        options["quality"] = 95
    if pil_format == "PNG":
        if png_writer == "parallel" and image.mode in COLOUR_TYPES:
            return encode_png(image, text)
        info = PngImagePlugin.PngInfo()
        for key, value in text:
            info.add_text(key, value)
        options.update(pnginfo=info, compress_type=png_strategy, compress_level=png_level)
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _fit_jpeg_exif(exif: Image.Exif, metadata: Mapping[str, Any], server_version: str) -> None:
    """Shrink ``exif`` into the one JPEG marker segment it must fit (``JPEG_MAX_EXIF``).

    Long prompts (the api takes 20,000 characters, written three times in UTF-16) overflow it, and
    Pillow would fail the job after its image was made. The maker note goes first: the sidecar JSON
    holds the same. Then the prompts in ``parameters`` are shortened until it fits, keeping the line
    of steps, seed and hashes that tools read; where that line alone is too long (hundreds of
    networks), ``parameters`` goes too.
    """
    if len(exif.tobytes()) <= JPEG_MAX_EXIF:
        return
    del exif[EXIF_MAKER_NOTE]
    params = dict(metadata.get("params", {}))
    keep = max(len(str(params.get(key) or "")) for key in ("prompt", "negative_prompt"))
    while len(exif.tobytes()) > JPEG_MAX_EXIF and keep > 0:
        keep //= 2
        shortened = {key: str(params.get(key) or "")[:keep] for key in ("prompt", "negative_prompt")}
        exif[EXIF_USER_COMMENT] = _user_comment(
            a1111_parameters({**metadata, "params": {**params, **shortened}}, server_version)
        )
    if len(exif.tobytes()) > JPEG_MAX_EXIF:  # the hash lists alone overflow it: the sidecar has all
        del exif[EXIF_USER_COMMENT]


def _user_comment(text: str) -> bytes:
    """EXIF's Unicode user-comment payload: an 8-byte charset header, then UTF-16."""
    return b"UNICODE\x00" + text.encode("utf-16-be")


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """A copy shrunk (never enlarged) to fit a ``size`` square, aspect kept."""
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.LANCZOS)
    return copy


def read_metadata(image: Image.Image) -> dict[str, Any] | None:
    """The metadata JSON an image made by onnx-web (or this service) carries, if any."""
    note = _maker_note(image)
    if not note:
        return None
    try:
        parsed = json.loads(note)
    except (ValueError, RecursionError):  # not JSON, too deep, or an integer past Python's digits
        return None
    return parsed if isinstance(parsed, dict) else None


def _maker_note(image: Image.Image) -> str | None:
    note = image.info.get("maker note") if hasattr(image, "info") else None
    if note is None:
        raw = image.getexif().get(EXIF_MAKER_NOTE)
        if isinstance(raw, bytes) and raw.startswith(b"UNICODE\x00"):
            note = raw[8:].decode("utf-16-be", errors="replace")
    return note if isinstance(note, str) else None


#: The most of an upload's maker note read: a generated image's is a few kilobytes.
MAX_UPLOAD_NOTE = 64 * 1024
#: Bounds of what an upload's metadata may hand on (the api's own prompt limit included).
MAX_TEXT = 20_000
MAX_NAME = 256
MAX_PARAMS = 64
MAX_NETWORKS = 32


def uploaded(image: Image.Image) -> StageImage:
    """An uploaded image as a chain input (a route's source, or a stage's ``source:<name>``), in
    RGB, with what its metadata may hand on (``upload_metadata``)."""
    return StageImage(image.convert("RGB"), upload_metadata(image) or {})


def upload_metadata(image: Image.Image) -> dict[str, Any] | None:
    """What an uploaded image's metadata may hand on to the images made from it, or ``None``.

    Upscaling or blending one of our (or onnx-web's) outputs records the params it was made with,
    as onnx-web's routes do. The upload is a stranger's: only the shape of contract §7.3 is kept
    (``params`` of scalars, those clients read with their types, ``models``/``loras``/``inversions``
    entries of name, hash and weight), each value checked and bounded; anything else, or a note too
    large to be ours, is dropped.
    Sizes are not handed on: the upload itself is the new job's input.
    """
    note = _maker_note(image)
    if not note or len(note) > MAX_UPLOAD_NOTE:
        return None
    recorded = read_metadata(image)
    if recorded is None:
        return None
    kept: dict[str, Any] = {}
    params = recorded.get("params")
    if isinstance(params, dict):
        kept["params"] = {
            key: value
            for key, value in list(params.items())[:MAX_PARAMS]
            if isinstance(key, str) and len(key) <= MAX_NAME and _plain_scalar(value) and _typed(key, value)
        }
    for key in ("models", "loras", "inversions"):
        entries = recorded.get(key)
        if isinstance(entries, list):
            kept[key] = [found for entry in entries[:MAX_NETWORKS] if (found := _network(entry)) is not None]
    return kept or None


#: The types of the params clients read unguarded (onnx-web's GUI: its cards and "use params").
KNOWN_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "scheduler": (str,),
    "prompt": (str,),
    "negative_prompt": (str,),
    "seed": (int,),
    "steps": (int,),
    "batch": (int,),
    "cfg": (int, float),
    "eta": (int, float),
}


def _typed(key: str, value: Any) -> bool:
    """Whether a known param has its type (a bool is no number here)."""
    types = KNOWN_PARAM_TYPES.get(key)
    return types is None or (isinstance(value, types) and not isinstance(value, bool))


def _plain_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    if isinstance(value, float):
        return math.isfinite(value)  # JSON has no NaN or Infinity
    return value is None or isinstance(value, (bool, int))


def _network(entry: Any) -> dict[str, Any] | None:
    """One ``models``/``loras``/``inversions`` entry, or ``None`` if it is not one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    name, digest, weight = entry["name"], entry.get("hash", "unknown"), entry.get("weight", 1.0)
    if len(name) > MAX_NAME or not isinstance(digest, str) or len(digest) > MAX_NAME:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        return None
    return {"name": name, "hash": digest, "weight": weight}

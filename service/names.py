"""Job names (contract §6.2) and the sanitising of names received in query strings (§1.6).

A job name is ``<mode>_<seed>_<sha256 hex>_<unix seconds>``. The hash covers, in this order: the
mode, the model path, pipeline, scheduler, prompt (after wildcard expansion), negative prompt
(skipped when there is none), cfg (packed as a 32-bit float), seed and steps (unsigned 32-bit
integers), eta (32-bit float), batch, width and height (unsigned 32-bit integers), then the route's
extras (img2img: strength; inpaint: the four borders, the mask filter and noise source function
names, the fill colour and the tile order). Strings are hashed as UTF-8, big-endian packing.

NOTE(names): onnx-web stops there, so two identical requests within one second got the same name
and the second overwrote the first. We append the job's UUID (its 16 bytes) last, which keeps the
name's shape and every field above while making each job's name its own.
"""

from __future__ import annotations

import hashlib
import struct
import time
import uuid
from collections.abc import Iterable

from service.params import ParsedRequest

#: Characters kept in query-string names besides Unicode letters and digits.
NAME_PUNCTUATION = frozenset("._-")

HashValue = str | int | float | bool | None


def job_name(
    mode: str,
    request: ParsedRequest,
    job_id: uuid.UUID,
    *,
    size: tuple[int, int] | None = None,
    now: float | None = None,
) -> str:
    """The name of a job: its mode, seed, the hash of its parameters and id, and the time.

    Args:
        mode: the job's mode (``txt2img``, ``img2img``, …, ``chain``).
        request: the parsed request (for a chain, its ``defaults``); the seed is resolved.
        job_id: the job's id, hashed last so identical requests get distinct names.
        size: ``(width, height)`` to hash instead of the requested size (onnx-web hashes the
            source image's size for img2img and inpaint).
        now: seconds since the epoch; the current time when ``None``.
    """
    image = request.image
    width, height = size or (image.width, image.height)
    fields: Iterable[HashValue] = (
        mode,
        image.model,
        image.pipeline,
        image.scheduler,
        image.prompt,
        image.negative_prompt,
        float(image.cfg),
        image.seed,
        image.steps,
        float(image.eta),
        image.batch,
        width,
        height,
        *route_extras(request),
    )
    sha = hashlib.sha256()
    for value in fields:
        sha.update(_pack(value))
    sha.update(job_id.bytes)
    seconds = int(time.time() if now is None else now)
    return f"{mode}_{image.seed}_{sha.hexdigest()}_{seconds}"


def route_extras(request: ParsedRequest) -> tuple[HashValue, ...]:
    """The route-specific fields hashed after the image parameters."""
    if request.img2img is not None:
        return (float(request.img2img.strength),)
    if request.inpaint is not None:
        border, inpaint = request.border, request.inpaint
        return (
            border.left,
            border.right,
            border.top,
            border.bottom,
            # onnx-web hashes the Python function names of the mask filter and noise source.
            f"mask_filter_{inpaint.mask_filter.replace('-', '_')}",
            f"noise_source_{inpaint.noise_source.replace('-', '_')}",
            inpaint.fill_color,
            inpaint.tile_order,
        )
    return ()


def sanitize_name(name: str) -> str:
    """Keep only Unicode letters and digits and ``.``, ``_``, ``-`` (contract §1.6)."""
    return "".join(char for char in name if char.isalnum() or char in NAME_PUNCTUATION)


def _pack(value: HashValue) -> bytes:
    """The bytes onnx-web hashes for one value: nothing for ``None``."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return struct.pack("!B", value)
    if isinstance(value, float):
        return struct.pack("!f", value)
    if isinstance(value, int):
        return struct.pack("!I", value)
    return value.encode("utf-8")

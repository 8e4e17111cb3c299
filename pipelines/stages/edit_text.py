"""``edit-text``: draw a line of text on every image.

Params: ``text`` (required); ``x``, ``y`` (default 0), the top-left corner of the text, flat
because the chain schema cannot carry onnx-web's ``position`` array; ``fill`` (default white)
and ``stroke`` (default black), PIL colour names or ``#rrggbb``; ``stroke_width`` (default 1);
``font_size`` (default 10, the size of PIL's default font, which onnx-web drew with).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import ImageColor, ImageDraw, ImageFont

from pipelines.context import StageContext, StageImage
from pipelines.imageops.upscale import with_image
from pipelines.stages.options import text, whole_number

DEFAULT_FONT_SIZE = 10
MAX_FONT_SIZE = 1024
MAX_STROKE_WIDTH = 64


def _colour(params: Mapping[str, Any], field: str, default: str) -> tuple[int, ...]:
    value = text(params, field, default)
    try:
        return ImageColor.getrgb(value)
    except ValueError as err:
        raise ValueError(f"{field} must be a colour name or #rrggbb, got {value!r}") from err


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Draw ``text`` at (``x``, ``y``) on a copy of each image."""
    words = text(params, "text")
    position = (whole_number(params, "x", 0), whole_number(params, "y", 0))
    fill = _colour(params, "fill", "white")
    stroke = _colour(params, "stroke", "black")
    stroke_width = whole_number(params, "stroke_width", 1, low=0, high=MAX_STROKE_WIDTH)
    font = ImageFont.load_default(
        size=whole_number(params, "font_size", DEFAULT_FONT_SIZE, low=1, high=MAX_FONT_SIZE)
    )
    edited = []
    for item in images:
        image = item.image.convert("RGB")  # a copy, so earlier stages' images stay as they were
        ImageDraw.Draw(image).text(
            position, words, fill=fill, font=font, stroke_width=stroke_width, stroke_fill=stroke
        )
        edited.append(with_image(item, image))
    ctx.on_step(1)
    return edited


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

"""``edit-text``: draw a line of text on every image.

Params: ``text`` (required); ``x``, ``y`` (default 0), the top-left corner of the text, flat
because the chain schema cannot carry onnx-web's ``position`` array; ``fill`` (default white)
and ``stroke`` (default black), PIL colour names or ``#rrggbb``; ``stroke_width`` (default 1);
``font_size`` (default 10, the size of PIL's default font, which onnx-web drew with).
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageColor, ImageDraw, ImageFont

from pipelines.context import StageContext, StageImage
from pipelines.stages.shared import edit_each
from pipelines.stages.spec import StageType, color, integer, text


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Draw ``text`` at (``x``, ``y``) on a copy of each image."""
    words = str(params["text"])
    position = (int(params["x"]), int(params["y"]))
    fill, stroke = ImageColor.getrgb(params["fill"]), ImageColor.getrgb(params["stroke"])
    stroke_width = int(params["stroke_width"])
    font = ImageFont.load_default(size=int(params["font_size"]))

    def draw(image: Image.Image) -> Image.Image:
        image = image.convert("RGB")  # a copy, so earlier stages' images stay as they were
        ImageDraw.Draw(image).text(
            position, words, fill=fill, font=font, stroke_width=stroke_width, stroke_fill=stroke
        )
        return image

    return edit_each(ctx, images, draw)


STAGE = StageType(
    "edit-text",
    run,
    (
        text("text", 1000, required=True),
        integer("x", 0, 8192, 0),
        integer("y", 0, 8192, 0),
        color("fill", "white"),
        color("stroke", "black"),
        integer("stroke_width", 0, 64, 1),
        integer("font_size", 1, 512, 10),
    ),
)

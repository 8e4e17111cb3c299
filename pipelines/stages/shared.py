"""What several stage types share: parameters they declare alike, and their per-image loop."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.imageops.tiling import TILE_ORDERS_AVAILABLE
from pipelines.imageops.upscale import with_image
from pipelines.stages.spec import choice, integer, number

#: Seeds are hashed into job names as unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
#: What a stage that the executor tiles reads about its tiles, and which ``a || b`` prompt part it uses.
TILING = (
    # onnx-web's default for a stage's tiles (contract §10.4); the legacy routes pass vae_overlap.
    number("overlap", 0, 0.9, 0.5),
    choice("tile_order", TILE_ORDERS_AVAILABLE, "spiral"),
    integer("prompt_index", 0, 16, 0),
)
#: Outpainting borders in pixels.
BORDER = tuple(integer(side, 0, 1024, 0) for side in ("left", "right", "top", "bottom"))


def edit_each(
    ctx: StageContext, images: list[StageImage], edit: Callable[[Image.Image], Image.Image]
) -> list[StageImage]:
    """Each image replaced by ``edit(image)`` (its metadata size updated), then one step of progress.

    Cancellation is checked before each image, so a long list stops as soon as the job is cancelled.
    """
    edited = []
    for item in images:
        ctx.check_cancelled()
        edited.append(with_image(item, edit(item.image)))
    ctx.on_step(1)
    return edited

"""Parameters several stage types declare alike."""

from __future__ import annotations

from pipelines.imageops.tiling import TILE_ORDERS_AVAILABLE
from pipelines.stages.spec import choice, integer, number

#: Seeds are hashed into job names as unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
#: What a stage that the executor tiles reads about its tiles, and which ``a || b`` prompt part it uses.
TILING = (
    number("overlap", 0, 0.9, 0.25),
    choice("tile_order", TILE_ORDERS_AVAILABLE, "spiral"),
    integer("prompt_index", 0, 16, 0),
)
#: Outpainting borders in pixels.
BORDER = tuple(integer(side, 0, 1024, 0) for side in ("left", "right", "top", "bottom"))

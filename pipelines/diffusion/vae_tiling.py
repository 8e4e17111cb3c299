"""Tiled VAE: run the VAE on overlapping tiles and blend them back with linear weights.

A VAE's memory grows with the image it sees (its mid-block attention quadratically), so large
images are decoded (and encoded) one tile at a time (contract §3.2: ``tiled_vae``, ``vae_tile``,
``vae_overlap``). Tiles sit on the latent grid, so every decoder tile covers whole pixel blocks
and every encoder tile whole latent cells. Where neighbours overlap, each tile's weight ramps
linearly from its inner side to nearly zero at its edge, the part most affected by the zero
padding the VAE sees there, and the weights of overlapping tiles add up to one, so the result
changes smoothly across every tile border.

The VAE normalises (GroupNorm) and attends over whatever it is given, so a tile's statistics are
its own: tiled output is close to, not equal to, the whole-image output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Contract §3.2 limits of ``vae_tile`` (pixels) and ``vae_overlap`` (fraction of a tile).
MIN_TILE = 128
MAX_TILE = 1024
MAX_OVERLAP = 0.9
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 0.25

#: One VAE call: a ``(1, C, h, w)`` array in, a ``(1, C', h', w')`` array out.
VaeRun = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class VaeTiling:
    """The VAE tile size in image pixels and the fraction of a tile that neighbours share."""

    tile: int = DEFAULT_TILE
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if not MIN_TILE <= self.tile <= MAX_TILE:
            raise ValueError(f"vae_tile must be from {MIN_TILE} to {MAX_TILE} pixels, got {self.tile}")
        if not 0 <= self.overlap <= MAX_OVERLAP:
            raise ValueError(f"vae_overlap must be from 0 to {MAX_OVERLAP}, got {self.overlap}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> VaeTiling | None:
        """The tiling a stage's params ask for, or ``None`` when ``tiled_vae`` is off."""
        if not params["tiled_vae"]:
            return None
        return cls(
            tile=int(params["vae_tile"]),
            overlap=float(params["vae_overlap"]),
        )

    def cells(self, factor: int) -> tuple[int, int]:
        """Tile size and stride in latent cells for a VAE of ``factor`` pixels per cell."""
        size = max(1, self.tile // factor)
        return size, max(1, round(size * (1 - self.overlap)))


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of the tiles covering ``length`` cells: every ``stride``, the last flush with the end.

    Keeping every tile whole (rather than cutting the last one short) gives the VAE the context
    it was meant to have at the image's far edges too.
    """
    if length <= size:
        return [0]
    return [*range(0, length - size, stride), length - size]


def axis_weights(starts: list[int], size: int, length: int, scale: int) -> list[np.ndarray]:
    """Per-tile weights along one axis, in output units (``scale`` per cell).

    A tile ramps up over its overlap with the previous tile and down over its overlap with the
    next one; the ramps of two neighbours are complementary, so they sum to one.
    """
    span = min(size, length)
    weights = []
    for index, start in enumerate(starts):
        weight = np.ones(span * scale, dtype=np.float32)
        if index > 0:
            shared = (starts[index - 1] + span - start) * scale
            weight[:shared] *= (np.arange(shared, dtype=np.float32) + 0.5) / shared
        if index + 1 < len(starts):
            shared = (start + span - starts[index + 1]) * scale
            weight[span * scale - shared :] *= (shared - np.arange(shared, dtype=np.float32) - 0.5) / shared
        weights.append(weight)
    return weights


def run_tiled(
    run: VaeRun,
    array: np.ndarray,
    *,
    size: int,
    stride: int,
    cell_in: int,
    cell_out: int,
) -> np.ndarray:
    """Run ``run`` on overlapping tiles of one ``(1, C, H, W)`` array and blend the results.

    Tiles are ``size`` cells square (or the whole side, if shorter), placed every ``stride``
    cells; a cell is ``cell_in`` input and ``cell_out`` output elements per side (decoding:
    1 latent in, ``factor`` pixels out; encoding: the reverse). Only one tile is ever passed
    to the VAE, and the blend needs just the output and one weight plane besides.
    """
    if array.shape[2] % cell_in or array.shape[3] % cell_in:
        raise ValueError(f"input of {array.shape[3]}x{array.shape[2]} is not on a grid of {cell_in}")
    rows, cols = array.shape[2] // cell_in, array.shape[3] // cell_in
    tops, lefts = tile_starts(rows, size, stride), tile_starts(cols, size, stride)
    row_weights = axis_weights(tops, size, rows, cell_out)
    col_weights = axis_weights(lefts, size, cols, cell_out)
    height, width = min(size, rows), min(size, cols)
    total: np.ndarray | None = None
    weights = np.zeros((rows * cell_out, cols * cell_out), dtype=np.float32)
    for top, row_weight in zip(tops, row_weights, strict=True):
        for left, col_weight in zip(lefts, col_weights, strict=True):
            piece = array[
                :, :, top * cell_in : (top + height) * cell_in, left * cell_in : (left + width) * cell_in
            ]
            result = run(np.ascontiguousarray(piece))
            if total is None:
                total = np.zeros((*result.shape[:2], *weights.shape), dtype=np.float32)
            weight = np.outer(row_weight, col_weight)
            out_rows = slice(top * cell_out, (top + height) * cell_out)
            out_cols = slice(left * cell_out, (left + width) * cell_out)
            total[:, :, out_rows, out_cols] += result * weight
            weights[out_rows, out_cols] += weight
    assert total is not None  # tile_starts always yields at least one tile
    blended: np.ndarray = total / weights
    return blended


def decode_tiled(run: VaeRun, latents: np.ndarray, tiling: VaeTiling, factor: int) -> np.ndarray:
    """Decode ``(1, C, h, w)`` latents tile by tile into ``(1, 3, h * factor, w * factor)`` pixels."""
    size, stride = tiling.cells(factor)
    return run_tiled(run, latents, size=size, stride=stride, cell_in=1, cell_out=factor)


def encode_tiled(run: VaeRun, pixels: np.ndarray, tiling: VaeTiling, factor: int) -> np.ndarray:
    """Encode ``(1, 3, H, W)`` pixels (multiples of ``factor``) tile by tile into latents."""
    size, stride = tiling.cells(factor)
    return run_tiled(run, pixels, size=size, stride=stride, cell_in=factor, cell_out=1)

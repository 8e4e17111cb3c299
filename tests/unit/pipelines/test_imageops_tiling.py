"""Tiling: tile orders, coverage, blending without seams, masks, padding and the callbacks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageCancelled
from pipelines.imageops.noise import noise_fill_mask
from pipelines.imageops.tiling import needs_tiling, process_tiled, tile_grid, tile_positions, tile_spiral

WIDTH, HEIGHT, TILE = 200, 150, 64


def _gradient() -> Image.Image:
    """A smooth image whose curvature makes a tile's edge effects visible after resampling."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    channels = [(x / WIDTH) ** 2, (y / HEIGHT) ** 2, ((x + y) / (WIDTH + HEIGHT)) ** 2]
    return Image.fromarray(np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8))


def _lanczos2x(tile: Image.Image, mask: Image.Image | None) -> Image.Image:
    return tile.resize((tile.width * 2, tile.height * 2), Image.Resampling.LANCZOS)


def _seam_gradients(image: Image.Image, positions: list[tuple[int, int]], scale: int) -> tuple[float, float]:
    """Largest step between neighbouring pixels across tile borders, and everywhere else."""
    pixels = np.asarray(image, dtype=np.float32)
    dx = np.abs(np.diff(pixels, axis=1))
    dy = np.abs(np.diff(pixels, axis=0))
    columns = np.zeros(dx.shape[1], dtype=bool)
    rows = np.zeros(dy.shape[0], dtype=bool)
    for left, top in positions:
        for edge in (left * scale, (left + TILE) * scale):
            if 0 < edge < image.width:
                columns[edge - 1] = True
        for edge in (top * scale, (top + TILE) * scale):
            if 0 < edge < image.height:
                rows[edge - 1] = True
    across = max(dx[:, columns].max(), dy[rows].max())
    elsewhere = max(dx[:, ~columns].max(), dy[~rows].max())
    return float(across), float(elsewhere)


def test_grid_is_row_major_with_the_overlap_stride() -> None:
    assert tile_grid(200, 100, 64, 0.5) == [(x, y) for y in (0, 32, 64) for x in (0, 32, 64, 96, 128, 160)]
    assert tile_grid(64, 64, 64, 0.5) == [(0, 0)]
    assert tile_grid(100, 10, 64, 0.0) == [(0, 0), (64, 0)]


def test_spiral_is_centred_and_walks_clockwise_from_the_north_west() -> None:
    positions = tile_spiral(100, 100, 40, 0.5)
    xs = sorted({x for x, _ in positions})
    ys = sorted({y for _, y in positions})
    assert xs == ys == [0, 20, 40, 60]
    expected_cells = [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
        (2, 3),
        (1, 3),
        (0, 3),
        (0, 2),
        (0, 1),
    ]
    expected_cells += [(1, 1), (2, 1), (2, 2), (1, 2)]
    assert positions == [(xs[c], ys[r]) for c, r in expected_cells]

    # When the tiles overhang, the overhang is split between opposite edges.
    overhang = tile_spiral(WIDTH, HEIGHT, TILE, 0.25)
    left = min(x for x, _ in overhang)
    right = max(x for x, _ in overhang) + TILE
    assert left <= 0 and right >= WIDTH
    assert abs(-left - (right - WIDTH)) <= 1
    assert overhang[0] == (left, min(y for _, y in overhang))
    assert overhang[1][1] == overhang[0][1] and overhang[1][0] > overhang[0][0], "the walk starts eastwards"


@pytest.mark.parametrize("order", ["grid", "spiral"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiles_cover_every_pixel_once_each(order: str, overlap: float) -> None:
    positions = tile_positions(order, WIDTH, HEIGHT, TILE, overlap)
    covered = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for left, top in positions:
        covered[max(top, 0) : top + TILE, max(left, 0) : left + TILE] = True
    assert covered.all()
    assert len(set(positions)) == len(positions)


def test_unknown_and_kernel_orders_are_errors() -> None:
    with pytest.raises(ValueError, match="kernel"):
        tile_positions("kernel", 100, 100, 64, 0.5)
    with pytest.raises(ValueError, match="'zigzag'"):
        tile_positions("zigzag", 100, 100, 64, 0.5)
    with pytest.raises(ValueError, match="overlap"):
        tile_positions("grid", 100, 100, 64, 1.0)


def test_needs_tiling() -> None:
    assert not needs_tiling((512, 512), 512)
    assert needs_tiling((513, 100), 512)
    assert needs_tiling((64, 64), 512, has_mask=True)


@pytest.mark.parametrize("order", ["grid", "spiral"])
@pytest.mark.parametrize("pad", [True, False])
def test_identity_reassembles_the_image_exactly(order: str, pad: bool) -> None:
    image = _gradient()
    noise = noise_fill_mask if pad else None
    out = process_tiled(image, TILE, 0.25, 1, order, lambda tile, mask: tile, noise=noise)
    assert np.array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("order", ["grid", "spiral"])
def test_lanczos_tiles_blend_without_seams(order: str) -> None:
    image = _gradient()
    positions = tile_positions(order, WIDTH, HEIGHT, TILE, 0.25)
    out = process_tiled(image, TILE, 0.25, 2, order, _lanczos2x, noise=None)
    assert out.size == (WIDTH * 2, HEIGHT * 2)
    across, elsewhere = _seam_gradients(out, positions, 2)
    assert across <= elsewhere + 0.5, (across, elsewhere)

    # The measure does see seams: pasting tiles edge to edge leaves Lanczos' edge effects visible.
    hard = tile_positions("grid", WIDTH, HEIGHT, TILE, 0.0)
    pasted = process_tiled(image, TILE, 0.0, 2, "grid", _lanczos2x, noise=None)
    hard_across, hard_elsewhere = _seam_gradients(pasted, hard, 2)
    assert hard_across > hard_elsewhere


def test_padded_tiles_are_whole_and_their_masks_padded_white() -> None:
    image = Image.new("RGB", (100, 70), (10, 20, 30))
    mask = Image.new("L", (100, 70), 0)
    mask.paste(255, (0, 0, 10, 10))
    seen: list[tuple[tuple[int, int], int, int]] = []

    def record(tile: Image.Image, tile_mask: Image.Image | None) -> Image.Image:
        assert tile_mask is not None
        seen.append((tile.size, tile_mask.getextrema()[1], tile.getpixel((0, 0))[0]))  # type: ignore[index]
        return tile

    out = process_tiled(image, 64, 0.25, 1, "grid", record, mask=mask, noise=noise_fill_mask, fill="red")
    assert all(size == (64, 64) for size, _, _ in seen)
    assert all(mask_max == 255 for _, mask_max, _ in seen), "overhanging tiles carry white mask padding"
    assert np.array_equal(np.asarray(out), np.asarray(image)), "padding never reaches the output"


def test_cropped_tiles_fit_the_image_when_there_is_no_noise_source() -> None:
    sizes: list[tuple[int, int]] = []

    def record(tile: Image.Image, mask: Image.Image | None) -> Image.Image:
        sizes.append(tile.size)
        return tile

    process_tiled(Image.new("RGB", (100, 50)), 64, 0.5, 1, "grid", record, noise=None)
    assert sizes == [(64, 50), (64, 50), (36, 50)]


def test_tiles_with_a_black_mask_are_skipped_and_keep_the_input() -> None:
    image = _gradient()
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (195, 130, 200, 150))
    calls: list[int] = []

    def invert(tile: Image.Image, tile_mask: Image.Image | None) -> Image.Image:
        calls.append(1)
        return Image.fromarray(255 - np.asarray(tile))

    out = np.asarray(process_tiled(image, TILE, 0.0, 1, "grid", invert, mask=mask, noise=None))
    source = np.asarray(image)
    assert len(calls) == 1, "only the bottom-right tile touches the white part of the mask"
    assert np.array_equal(out[:128, :], source[:128, :])
    assert np.array_equal(out[128:, 192:], 255 - source[128:, 192:])


def test_progress_and_cancellation_callbacks() -> None:
    image = _gradient()
    reported: list[tuple[int, int]] = []
    out = process_tiled(
        image, TILE, 0.0, 1, "spiral", lambda t, m: t, on_tile=lambda d, n: reported.append((d, n))
    )
    total = len(tile_positions("spiral", WIDTH, HEIGHT, TILE, 0.0))
    assert reported == [(done, total) for done in range(1, total + 1)]
    assert out.size == image.size

    checks: list[int] = []

    def cancel_on_third() -> None:
        checks.append(1)
        if len(checks) == 3:
            raise StageCancelled()

    processed: list[int] = []
    with pytest.raises(StageCancelled):
        process_tiled(
            image,
            TILE,
            0.0,
            1,
            "grid",
            lambda t, m: processed.append(1) or t,
            check_cancelled=cancel_on_third,
        )
    assert len(processed) == 2


def test_a_tile_of_the_wrong_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 128x128"):
        process_tiled(Image.new("RGB", (64, 64)), 64, 0.0, 2, "grid", lambda t, m: t)

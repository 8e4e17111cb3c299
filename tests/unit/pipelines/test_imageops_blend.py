"""The ``blend-*`` stages: masks, linear mixes, grids and denoising, checked pixel by pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageImage
from pipelines.stages import blend_denoise, blend_grid, blend_linear, blend_mask
from pipelines.stages.spec import ParamError
from tests.unit.pipelines.contexts import stage_context
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resolved import run_stage


def _image(seed: int, size: tuple[int, int] = (16, 12)) -> Image.Image:
    return random_image(size, seed)


def test_blend_mask_takes_the_source_where_white_and_the_image_where_black() -> None:
    a, b = _image(1), _image(2)
    mask = Image.new("L", a.size, 0)
    mask.paste(255, (8, 0, 16, 12))  # right half white
    mask.paste(128, (0, 0, 1, 12))  # first column grey
    steps: list[int] = []
    inputs = {"source:mix": b, "mask:mix": mask}
    [out] = run_stage(
        blend_mask.STAGE, stage_context(inputs, steps), {"stage_name": "mix"}, [StageImage(a, {"note": "a"})]
    )

    pixels, pa, pb = (np.asarray(image).astype(int) for image in (out.image, a, b))
    assert np.array_equal(pixels[:, 8:], pb[:, 8:])
    assert np.array_equal(pixels[:, 1:8], pa[:, 1:8])
    assert np.abs(pixels[:, 0] - (pa[:, 0] * 127 + pb[:, 0] * 128) / 255).max() <= 1
    assert out.metadata == {"note": "a", "size": {"width": 16, "height": 12}}
    assert steps == [1]


def test_blend_mask_reads_transparent_as_black_and_resizes_uploads() -> None:
    a = _image(3)
    mask = Image.new("RGBA", (32, 24), (255, 255, 255, 0))  # transparent: keep everything
    mask.paste((255, 255, 255, 255), (0, 0, 32, 12))  # opaque white top half, at twice the size
    inputs = {"source:m": Image.new("RGB", (8, 6), (0, 255, 0)), "mask:m": mask}
    [out] = run_stage(blend_mask.STAGE, stage_context(inputs), {"stage_name": "m"}, [StageImage(a)])
    pixels = np.asarray(out.image)
    # Rows next to the mask's edge mix a little: the mask was resized from twice the size.
    assert np.all(pixels[:4] == (0, 255, 0))
    assert np.array_equal(pixels[8:], np.asarray(a)[8:])


def test_blend_mask_without_its_uploads_names_the_missing_key() -> None:
    with pytest.raises(ValueError, match="'source:mix'"):
        run_stage(blend_mask.STAGE, stage_context({}), {"stage_name": "mix"}, [StageImage(_image(1))])


def test_blend_linear_mixes_by_alpha() -> None:
    a, b = _image(4), _image(5)
    [out] = run_stage(
        blend_linear.STAGE,
        stage_context({"source:lin": b}),
        {"stage_name": "lin", "alpha": 0.25},
        [StageImage(a)],
    )
    expected = np.asarray(a).astype(float) * 0.75 + np.asarray(b).astype(float) * 0.25
    assert np.abs(np.asarray(out.image).astype(float) - expected).max() <= 1
    [same] = run_stage(
        blend_linear.STAGE,
        stage_context({"source:lin": b}),
        {"stage_name": "lin", "alpha": 0},
        [StageImage(a)],
    )
    assert np.array_equal(np.asarray(same.image), np.asarray(a))
    with pytest.raises(ValueError, match="alpha"):
        run_stage(
            blend_linear.STAGE,
            stage_context({"source:lin": b}),
            {"stage_name": "lin", "alpha": 2},
            [StageImage(a)],
        )


def test_blend_grid_appends_a_columns_by_rows_grid() -> None:
    cells = [StageImage(Image.new("RGB", (10, 8), (i * 60, 0, 0)), {"i": i}) for i in range(3)]
    out = run_stage(
        blend_grid.STAGE, stage_context({}), {"stage_name": "grid", "width": 2, "height": 2}, cells
    )
    assert out[:3] == cells
    grid = out[3]
    assert grid.image.size == (20, 16)
    assert grid.metadata == {"i": 0, "size": {"width": 20, "height": 16}}
    pixels = np.asarray(grid.image)
    assert np.all(pixels[:8, :10] == (0, 0, 0)) and np.all(pixels[:8, 10:] == (60, 0, 0))
    assert np.all(pixels[8:, :10] == (120, 0, 0))
    assert np.all(pixels[8:, 10:] == (0, 0, 0)), "the missing fourth cell stays black"


def test_blend_grid_resizes_odd_cells_and_needs_its_dimensions() -> None:
    cells = [StageImage(Image.new("RGB", (10, 8), "red")), StageImage(Image.new("RGB", (40, 40), "blue"))]
    out = run_stage(blend_grid.STAGE, stage_context({}), {"width": 2, "height": 1}, cells)
    assert out[2].image.size == (20, 8)
    assert np.all(np.asarray(out[2].image)[:, 10:] == (0, 0, 255))
    with pytest.raises(ParamError, match=r"params\.height: is required by blend-grid") as caught:
        run_stage(blend_grid.STAGE, stage_context({}), {"width": 2}, cells)
    assert caught.value.field == "params.height"
    with pytest.raises(ParamError, match=r"params\.width: must be an integer from 1 to 16, got 0"):
        run_stage(blend_grid.STAGE, stage_context({}), {"width": 0, "height": 1}, cells)


def test_blend_denoise_matches_opencv_and_removes_noise() -> None:
    rng = np.random.default_rng(6)
    flat = np.full((32, 32, 3), (100, 150, 200), dtype=np.float64)
    noisy = Image.fromarray(np.clip(flat + rng.normal(0, 8, flat.shape), 0, 255).astype(np.uint8))
    [out] = run_stage(blend_denoise.STAGE, stage_context({}), {"strength": 10}, [StageImage(noisy)])

    pixels = np.asarray(out.image).astype(float)
    assert pixels.std(axis=(0, 1)).max() < 0.5 * np.asarray(noisy).astype(float).std(axis=(0, 1)).min()
    bgr = np.ascontiguousarray(np.asarray(noisy)[..., ::-1])
    reference = cv2.fastNlMeansDenoisingColored(bgr, None, 10, 10, 7, 21)[..., ::-1]
    assert np.array_equal(np.asarray(out.image), reference)
    assert blend_denoise.STAGE.estimate({}) == 1

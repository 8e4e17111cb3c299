"""Full-resolution inpainting: a small masked area is inpainted alone, at one full UNet tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.context import StageContext, StageImage
from pipelines.models.sessions import SessionCache
from pipelines.stages import upscale_outpaint
from pipelines.stages.upscale_outpaint import fullres_region
from tests.unit.pipelines.resolved import RESOLVED, run_stage

PARAMS = {
    **RESOLVED,
    "model": "stable-diffusion-onnx-v1-inpainting",
    "scheduler": "ddim",
    "prompt": "a patch",
    "seed": 3,
    "steps": 3,
    "cfg": 5.0,
    "eta": 0.0,
    "batch": 1,
    "width": 256,
    "height": 256,
    "unet_tile": 128,
    "stage_name": "inpaint",
}


def small_mask(
    size: tuple[int, int] = (256, 256), box: tuple[int, int, int, int] = (150, 40, 190, 70)
) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_region_is_the_padded_square_around_the_mask_inside_the_image() -> None:
    region = fullres_region(small_mask(), {"fullres_padding": 1.5, "unet_tile": 128})
    assert region is not None
    left, top, right, bottom = region
    assert right - left == bottom - top == int(41 * 1.5)
    assert left <= 150 and right >= 191 and top <= 40 and bottom >= 71
    edge = fullres_region(small_mask(box=(0, 0, 20, 20)), {"fullres_padding": 2.0, "unet_tile": 128})
    assert edge is not None and edge[:2] == (0, 0), "kept inside the image at its edge"


def test_no_region_when_the_padded_mask_does_not_fit_a_tile() -> None:
    assert (
        fullres_region(small_mask(box=(10, 10, 240, 240)), {"fullres_padding": 1.2, "unet_tile": 128}) is None
    )
    assert fullres_region(Image.new("L", (256, 256), 0), {"unet_tile": 128}) is None


def test_fullres_inpaints_only_the_region_and_keeps_the_rest_exactly(
    models_path: Path, sessions: SessionCache
) -> None:
    x = np.linspace(0, 255, 256, dtype=np.uint8)
    source = Image.fromarray(
        np.stack(
            [np.tile(x, (256, 1)), np.tile(x[:, None], (1, 256)), np.full((256, 256), 90, np.uint8)], axis=2
        )
    )
    mask = small_mask()
    steps: list[int] = []
    ctx = StageContext(
        models_path=models_path, sessions=sessions, inputs={"mask:inpaint": mask}, on_step=steps.append
    )
    [whole] = run_stage(upscale_outpaint.STAGE, ctx, dict(PARAMS), [StageImage(source)])
    [fullres] = run_stage(
        upscale_outpaint.STAGE, ctx, {**PARAMS, "fullres": True, "fullres_padding": 1.2}, [StageImage(source)]
    )
    for result in (whole, fullres):
        assert result.image.size == source.size
        kept = np.asarray(mask) == 0
        assert np.array_equal(np.asarray(result.image)[kept], np.asarray(source)[kept])
    painted = np.asarray(mask) == 255
    assert not np.array_equal(np.asarray(whole.image)[painted], np.asarray(fullres.image)[painted]), (
        "full-res inpainting works at another resolution, so the painted pixels differ"
    )
    assert len(steps) == 2 * PARAMS["steps"]

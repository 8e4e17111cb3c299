"""``upscale-simple``: sizes, resampling against PIL, metadata, the scale-1 no-op and its declared range."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageImage
from pipelines.imageops.upscale import resize_simple
from pipelines.stages import upscale_simple
from pipelines.stages.spec import ParamError
from tests.unit.pipelines.contexts import stage_context
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resolved import run_stage


def _image(seed: int = 1, size: tuple[int, int] = (12, 8)) -> Image.Image:
    return random_image(size, seed)


@pytest.mark.parametrize(
    ("method", "resample"), [("bilinear", Image.Resampling.BILINEAR), ("lanczos", Image.Resampling.LANCZOS)]
)
def test_resizes_by_scale_like_pil(method: str, resample: Image.Resampling) -> None:
    steps: list[int] = []
    source = _image()
    item = StageImage(source, {"params": {"seed": 7}, "size": {"width": 12, "height": 8}})

    [out] = run_stage(
        upscale_simple.STAGE, stage_context(steps=steps), {"method": method, "scale": 2}, [item]
    )

    assert out.image.size == (24, 16)
    expected = np.asarray(source.resize((24, 16), resample))
    assert np.array_equal(np.asarray(out.image), expected)
    assert out.metadata == {"params": {"seed": 7}, "size": {"width": 24, "height": 16}}
    assert item.metadata["size"] == {"width": 12, "height": 8}, "the input's metadata is not mutated"
    assert steps == [1]


def test_fractional_scale_rounds_to_whole_pixels() -> None:
    [out] = run_stage(
        upscale_simple.STAGE,
        stage_context(),
        {"method": "lanczos", "scale": 1.5},
        [StageImage(_image(size=(11, 7)))],
    )
    assert out.image.size == (16, 10)
    assert out.metadata["size"] == {"width": 16, "height": 10}


def test_scale_of_one_keeps_the_image() -> None:
    source = _image(seed=3)
    [out] = run_stage(
        upscale_simple.STAGE, stage_context(), {"method": "bilinear", "scale": 1}, [StageImage(source)]
    )
    assert out.image is source
    assert out.metadata["size"] == {"width": 12, "height": 8}


@pytest.mark.parametrize("scale", [0.5, 0, 8.5])
def test_a_scale_outside_the_declared_range_is_refused_not_clamped(scale: float) -> None:
    steps: list[int] = []
    with pytest.raises(ParamError, match=rf"params\.scale: must be a number from 1 to 8, got {scale}$"):
        run_stage(
            upscale_simple.STAGE,
            stage_context(steps=steps),
            {"method": "bilinear", "scale": scale},
            [StageImage(_image())],
        )
    assert steps == [], "nothing ran"


@pytest.mark.parametrize("scale", [1, 0.5, 0])
def test_the_resize_itself_never_shrinks(scale: float) -> None:
    source = _image(seed=3)
    assert resize_simple(source, "bilinear", scale) is source


def test_scale_defaults_to_the_declared_two() -> None:
    assert upscale_simple.STAGE.resolve({}) == {"method": "lanczos", "scale": 2}
    [out] = run_stage(upscale_simple.STAGE, stage_context(), {}, [StageImage(_image())])
    assert out.image.size == (24, 16)


def test_unknown_method_is_an_error_that_names_it() -> None:
    with pytest.raises(ValueError, match="'nearest'"):
        run_stage(
            upscale_simple.STAGE, stage_context(), {"method": "nearest", "scale": 2}, [StageImage(_image())]
        )


def test_estimate_is_one_step() -> None:
    assert upscale_simple.STAGE.estimate({"method": "lanczos", "scale": 4}) == 1

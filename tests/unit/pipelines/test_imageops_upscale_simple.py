"""``upscale-simple``: sizes, resampling against PIL, metadata and the scale ≤ 1 no-op."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.stages import upscale_simple


def _context(steps: list[int]) -> StageContext:
    return StageContext(models_path=Path("."), sessions=None, on_step=steps.append)  # type: ignore[arg-type]


def _image(seed: int = 1, size: tuple[int, int] = (12, 8)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("method", "resample"), [("bilinear", Image.Resampling.BILINEAR), ("lanczos", Image.Resampling.LANCZOS)]
)
def test_resizes_by_scale_like_pil(method: str, resample: Image.Resampling) -> None:
    steps: list[int] = []
    source = _image()
    item = StageImage(source, {"params": {"seed": 7}, "size": {"width": 12, "height": 8}})

    [out] = upscale_simple.run(_context(steps), {"method": method, "scale": 2}, [item])

    assert out.image.size == (24, 16)
    expected = np.asarray(source.resize((24, 16), resample))
    assert np.array_equal(np.asarray(out.image), expected)
    assert out.metadata == {"params": {"seed": 7}, "size": {"width": 24, "height": 16}}
    assert item.metadata["size"] == {"width": 12, "height": 8}, "the input's metadata is not mutated"
    assert steps == [1]


def test_fractional_scale_rounds_to_whole_pixels() -> None:
    [out] = upscale_simple.run(
        _context([]), {"method": "lanczos", "scale": 1.5}, [StageImage(_image(size=(11, 7)))]
    )
    assert out.image.size == (16, 10)
    assert out.metadata["size"] == {"width": 16, "height": 10}


@pytest.mark.parametrize("scale", [1, 0.5, 0])
def test_scale_of_one_or_less_keeps_the_image(scale: float) -> None:
    source = _image(seed=3)
    [out] = upscale_simple.run(_context([]), {"method": "bilinear", "scale": scale}, [StageImage(source)])
    assert out.image is source
    assert out.metadata["size"] == {"width": 12, "height": 8}


def test_unknown_method_is_an_error_that_names_it() -> None:
    with pytest.raises(ValueError, match="'nearest'"):
        upscale_simple.run(_context([]), {"method": "nearest", "scale": 2}, [StageImage(_image())])


def test_estimate_is_one_step() -> None:
    assert upscale_simple.estimate({"method": "lanczos", "scale": 4}) == 1

"""``reduce-crop``, ``reduce-thumbnail``, ``edit-text`` and ``edit-metadata``, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageImage
from pipelines.stages import edit_metadata, edit_text, reduce_crop, reduce_thumbnail
from tests.unit.pipelines.contexts import stage_context
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resolved import run_stage


def _image(size: tuple[int, int] = (40, 30), seed: int = 4) -> Image.Image:
    return random_image(size, seed)


def test_crop_cuts_the_rectangle_from_every_image() -> None:
    first, second = _image(seed=1), _image(seed=2)
    steps: list[int] = []
    params = {"left": 5, "top": 7, "width": 20.0, "height": 10}
    out = run_stage(
        reduce_crop.STAGE,
        stage_context(steps=steps),
        params,
        [StageImage(first, {"note": 1}), StageImage(second)],
    )
    assert [item.image.size for item in out] == [(20, 10), (20, 10)]
    assert np.array_equal(np.asarray(out[0].image), np.asarray(first)[7:17, 5:25])
    assert np.array_equal(np.asarray(out[1].image), np.asarray(second)[7:17, 5:25])
    assert out[0].metadata == {"note": 1, "size": {"width": 20, "height": 10}}
    assert steps == [1]


def test_crop_reads_the_stage_upload_and_refuses_rectangles_outside_the_image() -> None:
    source = _image()
    [out] = run_stage(
        reduce_crop.STAGE,
        stage_context({"source:c": source}),
        {"stage_name": "c", "width": 40, "height": 30},
        [],
    )
    assert np.array_equal(np.asarray(out.image), np.asarray(source))
    for params, message in (
        ({"left": 21, "width": 20, "height": 10}, "does not fit inside the 40x30 image"),
        ({"top": 25, "width": 20, "height": 10}, "does not fit"),
        ({"left": -1, "width": 20, "height": 10}, "params.left: must be an integer from 0 to 8192, got -1"),
        ({"width": 0, "height": 10}, "params.width: must be an integer from 1 to 8192, got 0"),
        ({"width": 2.5, "height": 10}, "params.width: must be an integer from 1 to 8192, got 2.5"),
        ({"height": 10}, "params.width: is required by reduce-crop"),
    ):
        with pytest.raises(ValueError, match=message):
            run_stage(reduce_crop.STAGE, stage_context(), params, [StageImage(source)])


def test_thumbnail_fits_inside_the_box_keeping_the_shape_and_never_enlarges() -> None:
    wide, small = _image((400, 100), seed=3), _image((30, 20), seed=5)
    out = run_stage(
        reduce_thumbnail.STAGE,
        stage_context(),
        {"width": 100, "height": 100},
        [StageImage(wide), StageImage(small)],
    )
    assert out[0].image.size == (100, 25)
    expected = wide.resize((100, 25), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out[0].image), np.asarray(expected))
    assert out[0].metadata["size"] == {"width": 100, "height": 25}
    assert out[1].image is small
    [tall] = run_stage(
        reduce_thumbnail.STAGE, stage_context(), {"width": 64, "height": 50}, [StageImage(_image((100, 400)))]
    )
    assert tall.image.size == (12, 50)
    with pytest.raises(ValueError, match=r"params\.height: is required by reduce-thumbnail"):
        run_stage(reduce_thumbnail.STAGE, stage_context(), {"width": 64}, [StageImage(small)])


def test_text_is_drawn_in_its_fill_and_stroke_and_nowhere_else() -> None:
    base = Image.new("RGB", (200, 80), (0, 0, 255))
    params = {
        "text": "Hello",
        "x": 30,
        "y": 12,
        "fill": "#ff0000",
        "stroke": "lime",
        "stroke_width": 2,
        "font_size": 40,
    }
    [out] = run_stage(edit_text.STAGE, stage_context(), params, [StageImage(base, {"note": 1})])
    pixels = np.asarray(out.image)
    changed = np.argwhere((pixels != (0, 0, 255)).any(axis=2))
    top, left = changed.min(axis=0)
    assert 30 - 2 <= left <= 30 + 8 and 12 - 2 <= top <= 12 + 16
    assert ((pixels == (255, 0, 0)).all(axis=2)).sum() > 100
    assert ((pixels == (0, 255, 0)).all(axis=2)).sum() > 100
    assert np.array_equal(np.asarray(base), np.full((80, 200, 3), (0, 0, 255)))  # the input is untouched
    assert out.metadata == {"note": 1, "size": {"width": 200, "height": 80}}

    [plain] = run_stage(
        edit_text.STAGE, stage_context(), {"text": "Hello", "stroke_width": 0}, [StageImage(base)]
    )
    plain_pixels = np.asarray(plain.image)
    assert not (plain_pixels == (0, 0, 0)).all(axis=2).any()
    assert plain_pixels[..., 0].max() >= 200  # white fill: only it lifts red off the blue background
    assert np.argwhere((plain_pixels != (0, 0, 255)).any(axis=2)).max(axis=0)[0] < 16  # size 10 near the top


def test_text_refuses_bad_params() -> None:
    for params, message in (
        ({}, "text: is required by edit-text"),
        ({"text": "a", "fill": "no-such-colour"}, "fill: must be a colour"),
        ({"text": "a", "x": 1.5}, "x: must be an integer from 0 to 8192"),
        ({"text": "a", "stroke_width": -1}, "stroke_width: must be an integer from 0 to 64"),
    ):
        with pytest.raises(ValueError, match=message):
            run_stage(edit_text.STAGE, stage_context(), params, [StageImage(_image())])


def test_metadata_gets_the_note_and_merged_groups_on_copies() -> None:
    image = _image()
    original = {"size": {"width": 40, "height": 30}, "upscale": {"outscale": 2, "faces": False}}
    item = StageImage(image, original)
    params = {"note": "checked", "upscale": {"faces": True, "face_strength": 0.7}, "highres": {"scale": 2}}
    [out] = run_stage(edit_metadata.STAGE, stage_context(), params, [item])
    assert out.image is image
    assert out.metadata == {
        "size": {"width": 40, "height": 30},
        "upscale": {"outscale": 2, "faces": True, "face_strength": 0.7},
        "highres": {"scale": 2},
        "note": "checked",
    }
    assert item.metadata == {"size": {"width": 40, "height": 30}, "upscale": {"outscale": 2, "faces": False}}
    [switches] = run_stage(edit_metadata.STAGE, stage_context(), {"upscale": False, "highres": True}, [item])
    assert switches.metadata == item.metadata
    with pytest.raises(ValueError, match="note: must be a string"):
        run_stage(edit_metadata.STAGE, stage_context(), {"note": 3}, [item])

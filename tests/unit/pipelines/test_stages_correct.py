"""Face correction: detection on a drawn face, alignment, strength, outscale and the demo GFPGAN."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from pipelines.context import StageImage
from pipelines.imageops.correct import (
    FEATHER,
    CorrectionSettings,
    detect_faces,
    face_transform,
    restore_face,
)
from pipelines.models.upscalers import DEMO_UPSCALERS, convert_upscaler, demo_module
from pipelines.stages import correct_codeformer, correct_gfpgan
from pipelines.stages.spec import ParamError
from tests.fixtures.faces import draw_face
from tests.unit.pipelines.contexts import Sessions, stage_context
from tests.unit.pipelines.resolved import UPSCALE, run_stage

FACE_SIZE = 64
#: The constant face model's output, in [-1, 1], and the 8-bit level it becomes.
CONSTANT = -0.2
CONSTANT_LEVEL = (CONSTANT + 1) * 127.5


def on_canvas(face: Image.Image, size: tuple[int, int], origin: tuple[int, int]) -> Image.Image:
    """``face`` pasted at ``origin`` on a textured background, so unchanged pixels are checkable."""
    rng = np.random.default_rng(7)
    canvas = Image.fromarray(rng.integers(40, 80, (size[1], size[0], 3), dtype=np.uint8))
    canvas.paste(face, origin)
    return canvas


def constant_face_model(path: Path, size: int = FACE_SIZE) -> Path:
    """A face model with the real I/O whose output is the constant ``CONSTANT`` everywhere."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "zero"], ["erased"]),
            helper.make_node("Mul", ["weight", "zero"], ["unused"]),
            helper.make_node("Add", ["erased", "unused"], ["blank"]),
            helper.make_node("Add", ["blank", "level"], ["output"]),
        ],
        "constant-face",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size]),
            helper.make_tensor_value_info("weight", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("level", TensorProto.FLOAT, [], [CONSTANT]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    constant_face_model(path / "correction-constant.onnx")
    for demo in DEMO_UPSCALERS:
        if demo.section == "correction":
            convert_upscaler(demo_module(demo), path / f"{demo.name}.onnx", fixed_size=demo.fixed_size)
    return path


def _crop_square(box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """Left, top and side, in image pixels, of the square a face box is cut as."""
    inverse = cv2.invertAffineTransform(face_transform(box, FACE_SIZE))
    left, top = inverse[:, 2]
    return float(left), float(top), float(inverse[0, 0] * FACE_SIZE)


def test_the_detector_finds_a_drawn_face_and_nothing_in_noise() -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [(x, y, w, h)] = detect_faces(image)
    assert abs(x + w / 2 - 214) <= 8 and abs(y + h / 2 - 104) <= 12
    assert 80 <= w <= 110
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 320, 3), dtype=np.uint8))
    assert detect_faces(noise) == []


def _run(stage: ModuleType, models: Path, image: Image.Image, **params: Any) -> StageImage:
    stored = {**UPSCALE, "stage_name": "faces", **params}
    [out] = run_stage(
        stage.STAGE, stage_context(models_path=models), stored, [StageImage(image, {"note": 1})]
    )
    return out


def test_strength_zero_returns_the_input_exactly(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    out = _run(correct_gfpgan, models, image, correction_model="correction-constant", face_strength=0)
    assert np.array_equal(np.asarray(out.image), np.asarray(image))
    [model] = out.metadata.pop("models")
    assert model["name"] == "correction-constant" and len(model["hash"]) == 10
    assert out.metadata == {"note": 1, "size": {"width": 320, "height": 200}}


def test_strength_one_takes_the_model_face_inside_the_feather_and_nothing_outside(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    out = np.asarray(
        _run(correct_gfpgan, models, image, correction_model="correction-constant", face_strength=1).image
    )
    source = np.asarray(image)
    left, top, side = _crop_square(box)
    inset = side * FEATHER + 1
    core = out[
        int(top + inset) + 1 : int(top + side - inset), int(left + inset) + 1 : int(left + side - inset)
    ]
    assert core.size > 0 and np.abs(core.astype(float) - CONSTANT_LEVEL).max() <= 1
    outside = np.ones(source.shape[:2], bool)
    outside[max(0, int(top) - 1) : int(top + side) + 2, max(0, int(left) - 1) : int(left + side) + 2] = False
    assert outside.sum() > 10_000
    assert np.array_equal(out[outside], source[outside])


def test_half_strength_mixes_the_face_with_the_original(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    left, top, side = _crop_square(box)
    out = np.asarray(
        _run(correct_gfpgan, models, image, correction_model="correction-constant", face_strength=0.5).image
    )
    rows = slice(int(top + side * FEATHER) + 2, int(top + side * (1 - FEATHER)) - 1)
    cols = slice(int(left + side * FEATHER) + 2, int(left + side * (1 - FEATHER)) - 1)
    expected = (np.asarray(image, float)[rows, cols] + CONSTANT_LEVEL) / 2
    assert np.abs(out[rows, cols] - expected).max() <= 1


def test_outscale_enlarges_with_lanczos_and_pastes_faces_at_that_scale(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    left, top, side = _crop_square(box)
    untouched = _run(
        correct_gfpgan,
        models,
        image,
        correction_model="correction-constant",
        face_strength=0,
        face_outscale=2,
    )
    lanczos = image.resize((640, 400), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(untouched.image), np.asarray(lanczos))
    assert untouched.metadata["size"] == {"width": 640, "height": 400}

    out = np.asarray(
        _run(
            correct_gfpgan,
            models,
            image,
            correction_model="correction-constant",
            face_strength=1,
            face_outscale=2,
        ).image
    )
    centre = (round(2 * (top + side / 2)), round(2 * (left + side / 2)))
    assert (
        np.abs(out[centre[0] - 20 : centre[0] + 20, centre[1] - 20 : centre[1] + 20] - CONSTANT_LEVEL).max()
        <= 1
    )


def test_an_image_without_faces_passes_through_scaled(models: Path) -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    same = _run(correct_gfpgan, models, image, correction_model="correction-constant", face_strength=1)
    assert np.array_equal(np.asarray(same.image), np.asarray(image))
    bigger = _run(
        correct_gfpgan,
        models,
        image,
        correction_model="correction-constant",
        face_strength=1,
        face_outscale=3,
    )
    assert np.array_equal(
        np.asarray(bigger.image), np.asarray(image.resize((270, 180), Image.Resampling.LANCZOS))
    )


def test_gfpgan_without_a_model_skips_faces_but_still_scales(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    out = _run(correct_gfpgan, models, image, face_strength=1, face_outscale=2)
    assert np.array_equal(
        np.asarray(out.image), np.asarray(image.resize((640, 400), Image.Resampling.LANCZOS))
    )


def test_codeformer_loads_its_default_model_and_reads_the_stage_upload(models: Path) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    ctx = stage_context({"source:cf": image}, models_path=models)
    [out] = run_stage(correct_codeformer.STAGE, ctx, {**UPSCALE, "stage_name": "cf", "face_strength": 1}, [])
    [box] = detect_faces(image)
    left, top, side = _crop_square(box)
    face = (
        slice(int(top + side / 4), int(top + side * 3 / 4)),
        slice(int(left + side / 4), int(left + side * 3 / 4)),
    )
    assert np.abs(np.asarray(out.image, float)[face] - np.asarray(image, float)[face]).mean() > 5
    assert out.image.size == (320, 200)
    with pytest.raises(FileNotFoundError, match="correction-missing"):
        run_stage(
            correct_codeformer.STAGE,
            ctx,
            {**UPSCALE, "stage_name": "cf", "correction_model": "correction-missing"},
            [],
        )


def test_codeformer_pastes_its_faces_whole_whatever_its_fidelity(models: Path) -> None:
    # face_strength is CodeFormer's fidelity input, not a blend: at the default 0.5 the face is the
    # model's, as onnx-web pastes it (where GFPGAN, which has no such input, blends at 0.5).
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    left, top, side = _crop_square(box)
    centre = (
        slice(int(top + side * 0.4), int(top + side * 0.6)),
        slice(int(left + side * 0.4), int(left + side * 0.6)),
    )
    ctx = stage_context({"source:cf": image}, models_path=models)
    params = {**UPSCALE, "stage_name": "cf", "correction_model": "correction-constant", "face_strength": 0.5}
    [codeformer] = run_stage(correct_codeformer.STAGE, ctx, params, [])
    assert np.abs(np.asarray(codeformer.image, float)[centre] - CONSTANT_LEVEL).max() <= 1
    gfpgan = _run(correct_gfpgan, models, image, correction_model="correction-constant", face_strength=0.5)
    assert np.abs(np.asarray(gfpgan.image, float)[centre] - CONSTANT_LEVEL).mean() > 10


def test_the_demo_codeformer_takes_the_strength_as_its_fidelity_weight(models: Path) -> None:
    session = Sessions().get(models / "correction-codeformer.onnx")
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    crop = cv2.warpAffine(
        np.asarray(image, np.float32), face_transform(box, FACE_SIZE), (FACE_SIZE, FACE_SIZE)
    )
    free, faithful = restore_face(session, crop, 0.0), restore_face(session, crop, 1.0)
    assert np.abs(free - faithful).mean() > 1


def test_the_demo_gfpgan_restores_the_aligned_crop_as_its_pytorch_module_does(models: Path) -> None:
    demo = next(demo for demo in DEMO_UPSCALERS if demo.model == "gfpgan")
    session = Sessions().get(models / f"{demo.name}.onnx")
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    crop = cv2.warpAffine(
        np.asarray(image, np.float32), face_transform(box, FACE_SIZE), (FACE_SIZE, FACE_SIZE)
    )
    restored = restore_face(session, crop, 0.5)
    with torch.no_grad():
        batch = torch.from_numpy(crop.transpose(2, 0, 1)[None].copy()) / 127.5 - 1
        expected = demo_module(demo).module(batch, return_rgb=False, randomize_noise=False)[0][0]
    expected_levels = (expected.clamp(-1, 1).numpy().transpose(1, 2, 0) + 1) * 127.5
    assert np.abs(restored - expected_levels).max() < 0.05

    out = np.asarray(
        _run(correct_gfpgan, models, image, correction_model=demo.name, face_strength=1).image, float
    )
    left, top, side = _crop_square(box)
    face = (
        slice(int(top + side / 4), int(top + side * 3 / 4)),
        slice(int(left + side / 4), int(left + side * 3 / 4)),
    )
    assert np.abs(out[face] - np.asarray(image, float)[face]).mean() > 5
    assert np.array_equal(out[:, :100], np.asarray(image, float)[:, :100])


def test_settings_read_the_upscale_group_only_and_refuse_paths_outside_the_models_folder() -> None:
    # The api maps the camel-case spellings (``correction``, ``faceStrength``, ``faceOutscale``)
    # into the upscale group; the stage reads the group alone.
    settings = CorrectionSettings.from_params(
        {
            **UPSCALE,
            "correction": "a",
            "correction_model": "b",
            "faceStrength": 0.1,
            "face_strength": 0.9,
            "faceOutscale": 3,
            "face_outscale": 2,
        },
        None,
    )
    assert settings == CorrectionSettings("b", 0.9, 2)
    assert CorrectionSettings.from_params(UPSCALE, "correction-codeformer") == CorrectionSettings(
        "correction-codeformer", 0.5, 1
    )
    assert CorrectionSettings.from_params({**UPSCALE, "correction": "a"}, None).model is None
    for name in ("../x", "/etc/x", "a\\b"):
        with pytest.raises(ValueError, match="models folder"):
            CorrectionSettings.from_params({**UPSCALE, "correction_model": name}, None)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"face_outscale": 1.5}, "correct-gfpgan.face_outscale: must be an integer, got 1.5"),
        ({"face_strength": "strong"}, "correct-gfpgan.face_strength: must be a number, got 'strong'"),
        ({"face_strength": None}, "correct-gfpgan.face_strength: must be a number, got None"),
    ],
)
def test_the_worker_refuses_face_settings_of_the_wrong_type_instead_of_rounding(
    models: Path, stored: dict[str, Any], message: str
) -> None:
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    with pytest.raises(ParamError, match=message):
        _run(correct_gfpgan, models, image, correction_model="correction-constant", **stored)
    missing = {key: value for key, value in UPSCALE.items() if key != "face_strength"}
    with pytest.raises(ParamError, match=r"correct-gfpgan\.face_strength: is missing from the stored chain"):
        run_stage(correct_gfpgan.STAGE, stage_context(models_path=models), missing, [StageImage(image)])


def test_the_crop_puts_eyes_and_mouth_where_the_ffhq_template_has_them() -> None:
    # draw_face(128) at (150, 40): centre (214, 104); eyes 9 px above it, mouth 24 px below.
    image = on_canvas(draw_face(128), (320, 200), (150, 40))
    [box] = detect_faces(image)
    to_face = face_transform(box, 512)
    eyes, mouth = to_face @ (214, 95, 1), to_face @ (214, 128, 1)
    assert np.abs(eyes - (256, 240)).max() < 30
    assert np.abs(mouth - (256, 371)).max() < 40

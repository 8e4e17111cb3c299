"""Demo upscalers: ONNX export against PyTorch, the extras file, and the model upscaling stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from pipelines.chain import ModelInvalid
from pipelines.context import StageImage
from pipelines.imageops.upscale import denoised_model, run_model_tile
from pipelines.memory import RUNTIME_BYTES, chain_memory
from pipelines.models.upscalers import DEMO_UPSCALERS, build_demo_upscalers, demo_module
from pipelines.stages import upscale_bsrgan, upscale_resrgan, upscale_swinir
from pipelines.stages.spec import ParamError
from tests.unit.pipelines.contexts import Sessions, stage_context
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resident import peak_rise
from tests.unit.pipelines.resolved import UPSCALE, run_stage


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    (path / "extras.json").write_text(
        json.dumps(
            {
                "diffusion": [{"name": "diffusion-demo", "source": "demo"}],
                "upscaling": [{"name": "upscaling-mine", "source": "x.pth", "scale": 2}],
            }
        )
    )
    build_demo_upscalers(path)
    return path


def _image(size: tuple[int, int], seed: int = 3) -> Image.Image:
    return random_image(size, seed)


@pytest.mark.parametrize("demo", DEMO_UPSCALERS, ids=lambda demo: demo.name)
def test_onnx_matches_the_pytorch_module(models: Path, demo) -> None:  # type: ignore[no-untyped-def]
    session = Sessions().get(models / f"{demo.name}.onnx")
    loaded = demo_module(demo)
    size = demo.fixed_size or 40
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if demo.section == "correction":
            expected = loaded.module(image * 2 - 1, return_rgb=False, randomize_noise=False)[0]
            feeds = {"input": (image * 2 - 1).numpy(), "weight": np.array([0.5], dtype=np.float32)}
        else:
            expected = loaded.module(image)
            feeds = {"input": image.numpy()}
    [actual] = session.run(None, feeds)
    assert actual.shape == tuple(expected.shape)
    assert np.abs(actual - expected.numpy()).max() < 1e-4
    assert float(expected.std()) > 0.01, "random weights still produce an image, not a constant"
    assert session.get_modelmeta().custom_metadata_map["scale"] == str(demo.scale)


def test_extras_file_lists_the_demos_and_keeps_other_entries(models: Path) -> None:
    extras = json.loads((models / "extras.json").read_text())
    assert extras["diffusion"] == [{"name": "diffusion-demo", "source": "demo"}]
    upscaling = {entry["name"]: entry for entry in extras["upscaling"]}
    assert upscaling["upscaling-mine"]["scale"] == 2
    assert upscaling["upscaling-bsrgan-x4"] == {
        "name": "upscaling-bsrgan-x4",
        "label": "BSRGAN x4 (demo)",
        "source": "demo",
        "model": "bsrgan",
        "scale": 4,
    }
    assert [entry["model"] for entry in extras["correction"]] == ["gfpgan", "codeformer"]


def test_a_second_build_keeps_existing_files(models: Path) -> None:
    before = {path: path.stat().st_mtime_ns for path in models.glob("*.onnx")}
    built: list[str] = []
    build_demo_upscalers(models, progress=built.append)
    assert built == []
    assert {path: path.stat().st_mtime_ns for path in models.glob("*.onnx")} == before


def test_resrgan_stage_upscales_with_the_model(models: Path) -> None:
    source = _image((20, 12))
    tiles: list[tuple[int, int]] = []
    params = {**UPSCALE, "upscale_model": "upscaling-real-esrgan-x4-plus", "outscale": 4, "stage_name": "up"}
    [out] = run_stage(
        upscale_resrgan.STAGE,
        stage_context(models_path=models, tiles=tiles),
        params,
        [StageImage(source, {"note": 1})],
    )
    assert out.image.size == (80, 48)
    [model] = out.metadata.pop("models")
    assert model["name"] == "upscaling-real-esrgan-x4-plus" and len(model["hash"]) == 10
    assert out.metadata == {"note": 1, "size": {"width": 80, "height": 48}}
    assert tiles == [(1, 1)]
    session = Sessions().get(models / "upscaling-real-esrgan-x4-plus.onnx")
    direct = session.run(None, {"input": (np.asarray(source, np.float32) / 255).transpose(2, 0, 1)[None]})[0][
        0
    ]
    expected = np.rint(np.clip(direct.transpose(1, 2, 0), 0, 1) * 255)
    assert np.array_equal(np.asarray(out.image), expected)


def test_outscale_is_finished_with_lanczos_and_tiles_are_blended(models: Path) -> None:
    source = _image((40, 24))
    tiles: list[tuple[int, int]] = []
    whole = {**UPSCALE, "upscale_model": "upscaling-bsrgan-x4", "outscale": 4}
    context = stage_context(models_path=models)
    [native] = run_stage(upscale_bsrgan.STAGE, context, whole, [StageImage(source)])
    [two] = run_stage(upscale_bsrgan.STAGE, context, {**whole, "outscale": 2}, [StageImage(source)])
    assert two.image.size == (80, 48)
    lanczos = native.image.resize((80, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(two.image), np.asarray(lanczos))
    # The group's outscale is the final size whatever the model's factor: 1 keeps the input's size.
    [one] = run_stage(upscale_bsrgan.STAGE, context, {**whole, "outscale": 1}, [StageImage(source)])
    assert one.image.size == (40, 24)
    back = native.image.resize((40, 24), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(one.image), np.asarray(back))

    [tiled] = run_stage(
        upscale_bsrgan.STAGE,
        stage_context(models_path=models, tiles=tiles),
        {**whole, "tiles": 16},
        [StageImage(source)],
    )
    assert tiled.image.size == (160, 96)
    assert len(tiles) > 1 and tiles[-1][0] == tiles[-1][1]
    assert np.abs(np.asarray(tiled.image, float) - np.asarray(native.image, float)).mean() < 20


def test_a_chain_stage_s_tiles_are_the_tiles_its_model_sees(models: Path) -> None:
    from pipelines.chain import run_chain

    params = {**UPSCALE, "upscale_model": "upscaling-bsrgan-x4", "outscale": 4}
    reports: list[tuple[int, int]] = []

    def tiles_seen(tiles: int) -> int:
        entry = {"name": "up", "type": "upscale-bsrgan", "params": params, "tiles": tiles, "outscale": 4}
        reports.clear()
        run_chain(
            {"stages": [entry], "sources": ["source"]},
            models_path=models,
            sessions=Sessions(),
            inputs={"source": _image((40, 24))},
            report=lambda progress: reports.append((progress.tiles.current, progress.tiles.total)),
        )
        return reports[-1][1]

    # The stage entry's tiles (onnx-web's tile_size), not always the type's largest (64 for BSRGAN).
    assert tiles_seen(64) == 1 and tiles_seen(16) > 1


def test_swinir_pads_small_tiles_to_its_fixed_input(models: Path) -> None:
    source = _image((40, 30))
    [out] = run_stage(
        upscale_swinir.STAGE,
        stage_context(models_path=models),
        {**UPSCALE, "upscale_model": "upscaling-swinir-real-large-x4", "outscale": 4},
        [StageImage(source)],
    )
    assert out.image.size == (160, 120)
    demo = next(demo for demo in DEMO_UPSCALERS if demo.model == "swinir")
    padded = np.pad(np.asarray(source, np.float32) / 255, ((0, 34), (0, 24), (0, 0)), mode="edge")
    with torch.no_grad():
        expected = demo_module(demo).module(torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()))
    expected_pixels = np.rint(np.clip(expected[0].numpy().transpose(1, 2, 0)[:120, :160], 0, 1) * 255)
    assert np.abs(np.asarray(out.image, float) - expected_pixels).max() <= 1
    session = Sessions().get(models / "upscaling-swinir-real-large-x4.onnx")
    with pytest.raises(ValueError, match="larger than the model's input"):
        run_model_tile(session, _image((65, 10)), 4)


def test_denoise_mixes_v3_with_its_wdn_sibling(models: Path) -> None:
    params = {**UPSCALE, "upscale_model": "upscaling-real-esrgan-x4-v3", "denoise": 0.3}
    context = stage_context(models_path=models)
    run_stage(upscale_resrgan.STAGE, context, params, [StageImage(_image((8, 8)))])
    [mixed_path] = context.sessions.loaded  # type: ignore[attr-defined]
    assert mixed_path.parent == models / ".cache"
    assert mixed_path.name.startswith("upscaling-real-esrgan-x4-v3-dni-0.30-")

    def weights(path: Path) -> dict[str, np.ndarray]:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    plain = weights(models / "upscaling-real-esrgan-x4-v3.onnx")
    wdn = weights(models / "upscaling-real-esrgan-x4-v3-wdn.onnx")
    mixed = weights(mixed_path)
    floats = [name for name, value in plain.items() if value.dtype == np.float32 and value.size > 1]
    assert floats
    for name in floats:
        assert np.allclose(mixed[name], 0.3 * plain[name] + 0.7 * wdn[name], atol=1e-6)

    full = stage_context(models_path=models)
    run_stage(upscale_resrgan.STAGE, full, {**params, "denoise": 1}, [StageImage(_image((8, 8)))])
    assert list(full.sessions.loaded) == [models / "upscaling-real-esrgan-x4-v3.onnx"]  # type: ignore[attr-defined]


def _v3_models(models: Path, folder: Path) -> Path:
    """A models folder of its own holding the v3 model and its sibling, for tests that change them."""
    for name in ("upscaling-real-esrgan-x4-v3", "upscaling-real-esrgan-x4-v3-wdn"):
        shutil.copy2(models / f"{name}.onnx", folder / f"{name}.onnx")
    return folder


def _first_weights(path: Path) -> np.ndarray:
    """The first floating-point weight tensor of ``path``, to tell two models' weights apart."""
    tensors = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    return next(t for t in tensors if t.dtype == np.float32 and t.size > 1)


def test_a_replaced_source_is_mixed_again_and_the_older_mix_removed(models: Path, tmp_path: Path) -> None:
    folder = _v3_models(models, tmp_path)
    plain = folder / "upscaling-real-esrgan-x4-v3.onnx"
    wdn = folder / "upscaling-real-esrgan-x4-v3-wdn.onnx"
    first = denoised_model(folder, "upscaling-real-esrgan-x4-v3", 0.5)
    assert denoised_model(folder, "upscaling-real-esrgan-x4-v3", 0.5) == first
    # A leftover of the releases that named mixes by strength alone, and another strength's mix.
    legacy = folder / ".cache" / "upscaling-real-esrgan-x4-v3-dni-0.50.onnx"
    shutil.copy2(first, legacy)
    other_strength = denoised_model(folder, "upscaling-real-esrgan-x4-v3", 0.2)

    # Replace the plain model by the sibling's weights: the mix becomes the sibling itself.
    shutil.copy(wdn, plain)
    second = denoised_model(folder, "upscaling-real-esrgan-x4-v3", 0.5)

    assert second != first
    assert np.allclose(_first_weights(second), _first_weights(wdn), atol=1e-6)
    assert not np.allclose(
        _first_weights(second), 0.5 * _first_weights(models / plain.name) + 0.5 * _first_weights(wdn)
    )
    assert sorted(path.name for path in (folder / ".cache").iterdir()) == sorted(
        [second.name, other_strength.name]
    )


def test_a_truncated_source_fails_as_a_damaged_model_despite_an_earlier_mix(
    models: Path, tmp_path: Path
) -> None:
    folder = _v3_models(models, tmp_path)
    params = {**UPSCALE, "upscale_model": "upscaling-real-esrgan-x4-v3", "denoise": 0.3}
    run_stage(upscale_resrgan.STAGE, stage_context(models_path=folder), params, [StageImage(_image((8, 8)))])
    plain = folder / "upscaling-real-esrgan-x4-v3.onnx"
    plain.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])

    with pytest.raises(ModelInvalid, match=r"upscaling-real-esrgan-x4-v3\.onnx") as raised:
        run_stage(
            upscale_resrgan.STAGE, stage_context(models_path=folder), params, [StageImage(_image((8, 8)))]
        )
    assert raised.value.code == "model_invalid"
    assert not list((folder / ".cache").glob("*.tmp"))


def test_a_missing_model_is_named(models: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'upscaling-nope'"):
        run_stage(
            upscale_resrgan.STAGE,
            stage_context(models_path=models),
            {**UPSCALE, "upscale_model": "upscaling-nope"},
            [StageImage(_image((8, 8)))],
        )
    with pytest.raises(ValueError, match="'upscaling'"):
        run_stage(
            upscale_resrgan.STAGE, stage_context(models_path=models), UPSCALE, [StageImage(_image((8, 8)))]
        )
    # The old spelling is the api's to map: a stored stage without the group is refused, not guessed.
    with pytest.raises(ParamError, match=r"upscale-resrgan\.upscale_model: is missing from the stored chain"):
        run_stage(
            upscale_resrgan.STAGE,
            stage_context(models_path=models),
            {"upscaling": "upscaling-real-esrgan-x4-plus"},
            [],
        )
    estimates = {stage.STAGE.estimate(UPSCALE) for stage in (upscale_swinir, upscale_bsrgan, upscale_resrgan)}
    assert estimates == {1}


def test_an_upscale_at_outscale_one_is_estimated_above_the_blend_it_builds_at_the_models_scale(
    models: Path,
) -> None:
    """The model upscales 4x before the result is resized to ``outscale``: at outscale 1 the
    estimate counted only the input and output images (0.1 GiB here), while the run holds a 4096²
    float blend (0.3 GiB and more)."""
    size, tile = (1024, 1024), 128
    params = {**UPSCALE, "upscale_model": "upscaling-real-esrgan-x4-v3", "outscale": 1, "tiles": tile}
    stage = {"name": "up", "type": "upscale-resrgan", "params": params, "tiles": tile, "outscale": 1}
    estimated = chain_memory([stage], size, model_bytes=lambda _: 0, family=lambda _: "sd")
    context = stage_context(models_path=models)
    source = StageImage(_image(size))
    run_stage(upscale_resrgan.STAGE, context, params, [StageImage(_image((64, 64)))])  # the session loads

    with peak_rise() as rise:
        [out] = run_stage(upscale_resrgan.STAGE, context, params, [source])

    assert out.image.size == size
    assert estimated.peak("cpu") - RUNTIME_BYTES >= rise[0], f"the run rose by {rise[0] / 2**30:.2f} GiB"

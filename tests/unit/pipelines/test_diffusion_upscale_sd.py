"""The SD x4 upscaler on its demo model, against diffusers' StableDiffusionUpscalePipeline on the
same weights."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.context import Progress, StageContext, StageImage
from pipelines.diffusion.model import DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.schedulers import make_scheduler
from pipelines.diffusion.upscale_sd import LOW_RES_SCHEDULER, noise_level, upscale_noise, upscale_sd
from pipelines.models.demo import DEMO_UPSCALER
from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import SessionCache
from pipelines.stages import STAGES, upscale_stable_diffusion
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, run_diffusers
from tests.unit.pipelines.resolved import RESOLVED, run_stage

#: The size of the upscaler's input, unless a test says otherwise.
SOURCE = (24, 16)
#: What these tests generate unless they say otherwise.
GENERATION = demo_generation(
    model=DEMO_UPSCALER,
    prompt="a red door",
    negative_prompt="blurry",
    seed=5,
    steps=3,
    cfg=7.0,
    width=SOURCE[0],
    height=SOURCE[1],
)


@pytest.fixture(scope="module")
def upscaler(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_UPSCALER, sessions)


def generation(scheduler: str, **changes: Any) -> Generation:
    return dataclasses.replace(GENERATION, scheduler=scheduler, **changes)


def torch_reference(
    parts: dict[str, Any], model: DiffusionModel, gen: Generation, level: int, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """diffusers' PyTorch upscale pipeline, given our starting latents and our image noise."""
    from diffusers import StableDiffusionUpscalePipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_upscale as module

    latents, image_noise = upscale_noise(gen.seed, gen.batch, gen.width, gen.height)
    # Given latents, the pipeline draws only the noise it adds to the low-resolution image.
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(image_noise))
    low_res_config = json.loads((model.folder / LOW_RES_SCHEDULER / "scheduler_config.json").read_text())
    return run_diffusers(
        StableDiffusionUpscalePipeline,
        parts,
        model,
        gen,
        {"low_res_scheduler": make_scheduler("ddpm", low_res_config)},
        image=gradient(gen.width, gen.height),
        noise_level=level,
        latents=torch.from_numpy(latents),
    )


@pytest.mark.parametrize(
    ("scheduler", "changes", "level"),
    [
        pytest.param("ddim", {}, 20, id="ddim-v-prediction"),
        pytest.param("euler-a", {"negative_prompt": None}, 350, id="euler-a-max-noise"),
        pytest.param("dpm-multi", {"batch": 2, "cfg": 1.0}, 0, id="dpm-multi-batch2-no-guidance"),
    ],
)
def test_upscale_matches_diffusers_torch_pipeline(
    upscaler: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    changes: dict[str, Any],
    level: int,
) -> None:
    gen = generation(scheduler, **changes)
    reference = torch_reference(torch_parts(DEMO_UPSCALER), upscaler, gen, level, monkeypatch)
    assert_matches(
        pixels(upscale_sd(Run(upscaler, gen), gradient(*SOURCE), level)), reference, (gen.batch, 64, 96, 3)
    )


def test_noise_level_changes_the_result(upscaler: DiffusionModel) -> None:
    quiet, loud = (
        pixels(upscale_sd(Run(upscaler, generation("ddim", steps=2)), gradient(*SOURCE), level))
        for level in (0, 300)
    )
    assert np.abs(quiet - loud).mean() > 1


@pytest.mark.parametrize(
    ("denoise", "level"),
    [(None, 20), (0.0, 0), (0.5, 20), (0.25, 10), (1.0, 40), (2.0, 2), (20, 20), (350, 350)],
)
def test_denoise_maps_to_a_noise_level(denoise: float | None, level: int) -> None:
    assert noise_level(denoise) == level


@pytest.mark.parametrize("denoise", [-0.1, 20.5, 351])
def test_denoise_outside_the_range_is_refused(denoise: float) -> None:
    with pytest.raises(ValueError, match="denoise"):
        noise_level(denoise)


def stage_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **RESOLVED,
        "model": "stable-diffusion-onnx-v1-5",
        "upscale_model": DEMO_UPSCALER,
        "scheduler": "ddim",
        "prompt": "a cat || a red door",
        "prompt_index": 1,
        "negative_prompt": None,
        "seed": 9,
        "steps": 3,
        "cfg": 6.0,
        "batch": 2,
        "denoise": 0.5,
        "stage_name": "upscale",
    }
    return {**params, **changes}


def test_stage_upscales_each_image_four_times(
    models_path: Path, sessions: SessionCache, upscaler: DiffusionModel
) -> None:
    steps: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=steps.append)
    # 20 x 12 is off the UNet's 8-pixel grid: padded for the UNet, cropped back to 4 times the input.
    inputs = [
        StageImage(gradient(20, 12), {"params": {"prompt": "kept"}}),
        StageImage(gradient(16, 16), {}),
    ]
    results = run_stage(upscale_stable_diffusion.STAGE, ctx, stage_params(outscale=4), inputs)
    assert [item.image.size for item in results] == [(80, 48), (64, 64)]
    assert results[0].metadata["size"] == {"width": 80, "height": 48}
    assert results[0].metadata["params"] == {"prompt": "kept"}
    assert results[0].metadata["models"] == [{"name": DEMO_UPSCALER, "hash": upscaler.hash, "weight": 1.0}]
    assert sum(steps) == 2 * 3
    # The stage runs the prompt's second part at noise level 20 (denoise 0.5: diffusers' default).
    gen = generation(
        "ddim", prompt="a red door", negative_prompt=None, seed=9, steps=3, cfg=6.0, width=16, height=16
    )
    assert np.array_equal(
        pixels([results[1].image]), pixels(upscale_sd(Run(upscaler, gen), gradient(16, 16), 20))
    )


def test_stage_upscales_its_uploaded_source(models_path: Path, sessions: SessionCache) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions, inputs={"source:upscale": gradient(8, 8)})
    (result,) = run_stage(upscale_stable_diffusion.STAGE, ctx, stage_params(steps=1, outscale=4), [])
    assert result.image.size == (32, 32)


def test_another_outscale_is_finished_from_the_4x_result_with_lanczos(
    models_path: Path, sessions: SessionCache
) -> None:
    from pipelines.chain import run_chain

    ctx = StageContext(models_path=models_path, sessions=sessions)
    source = StageImage(gradient(16, 12), {})
    [four] = run_stage(upscale_stable_diffusion.STAGE, ctx, stage_params(steps=1, outscale=4), [source])
    [two] = run_stage(upscale_stable_diffusion.STAGE, ctx, stage_params(steps=1, outscale=2), [source])
    assert two.image.size == (32, 24) and two.metadata["size"] == {"width": 32, "height": 24}
    assert np.array_equal(
        np.asarray(two.image), np.asarray(four.image.resize((32, 24), Image.Resampling.LANCZOS))
    )
    # Tiled, each tile is finished to the chain entry's outscale, so the tiles fit together.
    params = stage_params(steps=1, outscale=2)
    resolved = {**params, **upscale_stable_diffusion.STAGE.resolve(params)}
    stage = {"name": "upscale", "type": "upscale-stable-diffusion", "params": resolved, "tiles": 64}
    result = run_chain(
        {"stages": [{**stage, "outscale": 2}], "sources": ["source"]},
        models_path=models_path,
        sessions=sessions,
        inputs={"source": gradient(96, 64)},
    )
    (output,) = result.outputs
    assert output.image.size == (192, 128) and result.progress.tiles.total == 2


def test_stage_needs_an_upscaling_model(models_path: Path, sessions: SessionCache) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    with pytest.raises(ValueError, match="upscaling"):
        run_stage(
            upscale_stable_diffusion.STAGE,
            ctx,
            stage_params(upscale_model=None),
            [StageImage(gradient(*SOURCE), {})],
        )


def test_demo_upscaler_is_listed_as_a_scale_4_upscaling_model(models_path: Path) -> None:
    registry = ModelRegistry(models_path)
    assert DEMO_UPSCALER in registry.names("upscaling")
    assert DEMO_UPSCALER not in registry.names("diffusion")
    extras = json.loads((models_path / "extras.json").read_text())
    (entry,) = (entry for entry in extras["upscaling"] if entry["name"] == DEMO_UPSCALER)
    assert entry["scale"] == 4


def test_converter_exports_the_class_label_input(upscaler: DiffusionModel) -> None:
    inputs = {item.name: item.type for item in upscaler.session("unet").get_inputs()}
    assert inputs == {
        "sample": "tensor(float)",
        "timestep": "tensor(float)",
        "encoder_hidden_states": "tensor(float)",
        "class_labels": "tensor(int64)",
    }
    assert upscaler.vae_factor == 4
    index = json.loads((upscaler.folder / "model_index.json").read_text())
    assert index["_class_name"] == "OnnxStableDiffusionUpscalePipeline"
    assert index["max_noise_level"] == 350


def test_chain_executor_upscales_large_inputs_tile_by_tile(models_path: Path, sessions: SessionCache) -> None:
    from pipelines.chain import run_chain

    # What the api stores: the stage's own declared defaults applied (the executor defaults nothing).
    params = stage_params(steps=1, outscale=4)
    resolved = {**params, **upscale_stable_diffusion.STAGE.resolve(params)}
    assert (resolved["overlap"], resolved["tile_order"]) == (0.5, "spiral")  # onnx-web's defaults
    stage = {"name": "upscale", "type": "upscale-stable-diffusion", "params": resolved, "tiles": 64}
    chain = {"stages": [{**stage, "outscale": 4}], "sources": ["source"]}
    tiles: list[tuple[int, int]] = []
    result = run_chain(
        chain,
        models_path=models_path,
        sessions=sessions,
        inputs={"source": gradient(96, 64)},
        report=lambda progress: tiles.append((progress.tiles.current, progress.tiles.total)),
    )
    (output,) = result.outputs
    assert output.image.size == (384, 256)
    # 64-pixel tiles 32 pixels apart (the default overlap of 0.5): two across, one down, each
    # one stage run of one step.
    assert tiles[-1] == (2, 2)
    assert result.progress.steps.current == 2


def test_chain_progress_never_goes_back_and_ends_complete(models_path: Path, sessions: SessionCache) -> None:
    """An upscale job as the api builds it (the upscale, then ``persist-disk``) on two uploads:
    every counter only grows, through each image's tiles and into the next stage, and the last
    report counts all the work done."""
    from pipelines.chain import run_chain

    params = stage_params(steps=1, batch=1, outscale=4)
    upscale = {**params, **upscale_stable_diffusion.STAGE.resolve(params)}
    save = STAGES["persist-disk"].resolve({})
    chain = {
        "stages": [
            {
                "name": "upscale",
                "type": "upscale-stable-diffusion",
                "params": upscale,
                "tiles": 64,
                "outscale": 4,
            },
            {"name": "save", "type": "persist-disk", "params": save, "tiles": 8192, "outscale": 1},
        ],
        "sources": ["first", "second"],
    }
    reports: list[Progress] = []
    result = run_chain(
        chain,
        models_path=models_path,
        sessions=sessions,
        inputs={"first": gradient(96, 64), "second": gradient(96, 64)},
        report=reports.append,
    )
    assert [output.image.size for output in result.outputs if isinstance(output, StageImage)] == [
        (384, 256)
    ] * 2
    for name in ("steps", "stages", "tiles"):
        counts = [(getattr(report, name).current, getattr(report, name).total) for report in reports]
        for before, after in itertools.pairwise(counts):
            assert after[0] >= before[0] and after[1] >= before[1], f"{name} went back: {before} -> {after}"
    final = reports[-1]
    assert final == result.progress
    # Two tiles per image (two across, one down), each one run of one step.
    assert (final.tiles.current, final.tiles.total) == (4, 4)
    assert (final.stages.current, final.stages.total) == (2, 2)
    assert final.steps.current == final.steps.total >= 4


def test_the_upscaler_stays_on_the_sessions_of_a_gpu_worker(
    upscaler: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its UNet takes ``class_labels`` and its VAE scales by 4: the CUDA graphs feed neither."""
    from tests.unit.pipelines.graph_stand_in import route_to_cpu_stand_in

    graphs = route_to_cpu_stand_in(monkeypatch)
    images = upscale_sd(Run(upscaler, generation("ddim", steps=2)), gradient(*SOURCE), 20)
    assert [image.size for image in images] == [(SOURCE[0] * 4, SOURCE[1] * 4)]
    assert not graphs.made

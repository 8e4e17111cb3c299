"""img2img on the demo model, against diffusers' StableDiffusionImg2ImgPipeline on the same weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.model import DiffusionModel, Generation, Run
from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, img2img_reference
from tests.unit.pipelines.resolved import RESOLVED, run_stage

#: What these tests generate unless they say otherwise.
BASE = demo_generation(prompt="a painting of a house", negative_prompt="blurry", seed=5, steps=6, cfg=5.0)


def generation(scheduler: str, **changes: Any) -> Generation:
    return dataclasses.replace(BASE, scheduler=scheduler, **changes)


def torch_reference(
    parts: dict[str, Any],
    model: DiffusionModel,
    gen: Generation,
    strength: float,
    monkeypatch: pytest.MonkeyPatch,
) -> np.ndarray:
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    return img2img_reference(StableDiffusionImg2ImgPipeline, module, parts, model, gen, strength, monkeypatch)


@pytest.mark.parametrize(
    ("scheduler", "strength", "batch"),
    [
        ("ddim", 0.5, 1),
        ("euler-a", 0.7, 1),
        ("dpm-multi", 0.5, 2),
        ("pndm", 0.8, 1),
        ("heun", 0.5, 1),
        ("lms-discrete", 1.0, 1),
    ],
)
def test_img2img_matches_diffusers_torch_pipeline(
    demo_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    strength: float,
    batch: int,
) -> None:
    gen = generation(scheduler, batch=batch)
    reference = torch_reference(torch_parts(gen.model), demo_model, gen, strength, monkeypatch)
    assert_matches(pixels(img2img(Run(demo_model, gen), gradient(), strength)), reference, (batch, 48, 64, 3))


def test_strength_decides_how_far_the_image_moves(demo_model: DiffusionModel) -> None:
    source = pixels([gradient()])
    light = pixels(img2img(Run(demo_model, generation("ddim")), gradient(), 0.2))
    heavy = pixels(img2img(Run(demo_model, generation("ddim")), gradient(), 1.0))
    assert np.abs(light - source).mean() < np.abs(heavy - source).mean()


@pytest.mark.parametrize(
    ("steps", "strength", "expected"), [(10, 0.5, 5), (10, 0.05, 1), (3, 1.0, 3), (7, 0.3, 2)]
)
def test_stage_reports_the_steps_it_runs(
    models_path: Path, sessions: SessionCache, steps: int, strength: float, expected: int
) -> None:
    counted: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=counted.append)
    params = {**stage_params(), "steps": steps, "strength": strength}
    run_stage(blend_img2img.STAGE, ctx, params, [StageImage(gradient(), {})])
    assert sum(counted) == expected == blend_img2img.STAGE.estimate(params)


def stage_params() -> dict[str, Any]:
    return {
        **RESOLVED,
        "model": DEMO_MODELS[0].name,
        "pipeline": "img2img",  # what the api resolves for the img2img route
        "scheduler": "euler",
        "prompt": "a cat || a dog",
        "prompt_index": 1,
        "negative_prompt": None,
        "seed": 9,
        "steps": 4,
        "cfg": 6.0,
        "strength": 0.5,
        "batch": 2,
        "stage_name": "refine",
    }


def test_stage_replaces_each_input_with_its_batch(models_path: Path, sessions: SessionCache) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    inputs = [
        StageImage(gradient(), {"input_size": {"width": 32, "height": 24}, "highres": {"enabled": False}}),
        StageImage(gradient(70, 52), {}),
    ]
    results = run_stage(blend_img2img.STAGE, ctx, stage_params(), inputs)
    assert [item.image.size for item in results] == [(64, 48), (64, 48), (64, 48), (64, 48)]
    first = results[0].metadata
    assert first["input_size"] == {"width": 32, "height": 24}
    assert first["highres"] == {"enabled": False}
    assert first["params"]["pipeline"] == "img2img"
    assert first["params"]["prompt"] == "a dog"
    assert first["params"]["strength"] == 0.5
    assert results[2].metadata["input_size"] == {"width": 70, "height": 52}
    assert results[2].metadata["size"] == {"width": 64, "height": 48}


def test_stage_reads_its_uploaded_source_when_it_has_no_inputs(
    models_path: Path, sessions: SessionCache
) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions, inputs={"source:refine": gradient()})
    assert len(run_stage(blend_img2img.STAGE, ctx, stage_params(), [])) == 2
    with pytest.raises(ValueError, match="needs an input image"):
        run_stage(
            blend_img2img.STAGE, StageContext(models_path=models_path, sessions=sessions), stage_params(), []
        )


def test_schedulers_that_cannot_noise_an_image_are_refused(demo_model: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="scheduler 'ipndm' cannot start from an image"):
        img2img(Run(demo_model, generation("ipndm")), gradient(), 0.5)


def refine_in_tiles(
    models_path: Path, sessions: SessionCache, inputs: dict[str, Any], sources: list[str], **params: Any
) -> Any:
    """A one-stage chain: ``blend-img2img`` named ``refine`` in 64-px tiles over ``inputs``."""
    from pipelines.chain import run_chain

    resolved = {**stage_params(), "prompt_index": 0, "overlap": 0.5, "tile_order": "grid", **params}
    stage = {"name": "refine", "type": "blend-img2img", "params": resolved, "tiles": 64}
    return run_chain(
        {"stages": [stage], "sources": sources}, models_path=models_path, sessions=sessions, inputs=inputs
    )


def test_a_tiled_stage_makes_its_batch_one_seed_after_another(
    models_path: Path, sessions: SessionCache
) -> None:
    def tiled_outputs(batch: int, seed: int) -> tuple[list[Any], int]:
        inputs = {"source": gradient(96, 64)}
        result = refine_in_tiles(models_path, sessions, inputs, ["source"], batch=batch, seed=seed)
        return result.outputs, result.progress.steps.current

    def tiled(batch: int, seed: int) -> tuple[list[np.ndarray], int]:
        outputs, steps = tiled_outputs(batch, seed)
        return [np.asarray(output.image) for output in outputs], steps

    # A 96x64 upload in 64-px tiles: two tiles a pass, two scheduler steps each (strength 0.5 of 4).
    (alone,), alone_steps = tiled(1, 9)
    (first, second), steps = tiled(2, 9)
    assert first.shape == second.shape == (64, 96, 3)
    assert alone_steps == 2 * 2 and steps == 2 * alone_steps
    # The first is the batch-1 image; the second is the pass of the next seed, not a copy.
    assert np.array_equal(first, alone)
    (next_seed,), _ = tiled(1, 10)
    assert np.array_equal(second, next_seed) and not np.array_equal(first, second)
    # Each image records the stage that made it, with its own seed and the whole image's size.
    outputs, _ = tiled_outputs(2, 9)
    assert [output.metadata["params"]["seed"] for output in outputs] == [9, 10]
    for output in outputs:
        assert output.metadata["size"] == {"width": 96, "height": 64}
        assert output.metadata["input_size"] == {"width": 96, "height": 64}
        assert output.metadata["params"]["strength"] == 0.5
        assert output.metadata["models"][0]["name"] == output.metadata["params"]["model"]


def test_a_stage_upload_larger_than_its_tile_is_tiled_like_a_handed_image(
    models_path: Path, sessions: SessionCache
) -> None:
    handed = refine_in_tiles(models_path, sessions, {"source": gradient(96, 64)}, ["source"], batch=1)
    uploaded = refine_in_tiles(models_path, sessions, {"source:refine": gradient(96, 64)}, [], batch=1)
    # In 64-px tiles, as the memory estimate assumed, not one pass over the whole upload.
    assert uploaded.progress.tiles.total == handed.progress.tiles.total == 2
    [ours], [theirs] = uploaded.outputs, handed.outputs
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))


def test_the_step_total_counts_each_image_a_later_pass_repaints(
    models_path: Path, sessions: SessionCache
) -> None:
    from pipelines.chain import run_chain
    from pipelines.stages import estimate_steps

    params = {**stage_params(), "prompt_index": 0, "overlap": 0.5, "tile_order": "grid"}
    stages = [
        {"name": "img2img", "type": "blend-img2img", "params": {**params, "batch": 2}, "tiles": 512},
        {"name": "loopback", "type": "blend-img2img", "params": {**params, "batch": 1}, "tiles": 512},
    ]
    # Two scheduler steps a pass (strength 0.5 of 4): once for the upload, then once per image of its batch.
    assert estimate_steps(stages) == 2 + 2 * 2
    totals: list[int] = []
    result = run_chain(
        {"stages": stages, "sources": ["source"]},
        models_path=models_path,
        sessions=sessions,
        inputs={"source": gradient()},
        report=lambda progress: totals.append(progress.steps.total),
    )
    assert len(result.outputs) == 2
    # The total known at the start is the work done: it never has to grow on the way.
    assert set(totals) == {6} and result.progress.steps.current == 6

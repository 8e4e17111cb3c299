"""Inpainting on the demo models, against diffusers' StableDiffusionInpaintPipeline on the same weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.inpaint import inpaint, mask_to_array
from pipelines.diffusion.model import DiffusionModel, Generation, Run
from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import SessionCache
from pipelines.stages import upscale_outpaint
from tests.unit.pipelines.images import gradient, mask_image, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, inpaint_reference
from tests.unit.pipelines.resolved import RESOLVED, run_stage

BASE, INPAINT = (model.name for model in DEMO_MODELS)
#: What these tests generate unless they say otherwise.
GENERATION = demo_generation(prompt="a red door", negative_prompt="blurry", seed=11, steps=5, cfg=7.0)


def generation(model: str, scheduler: str, **changes: Any) -> Generation:
    return dataclasses.replace(GENERATION, model=model, scheduler=scheduler, **changes)


def torch_reference(
    parts: dict[str, Any], model: DiffusionModel, gen: Generation, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as module

    return inpaint_reference(StableDiffusionInpaintPipeline, module, parts, model, gen, monkeypatch)


@pytest.mark.parametrize(("scheduler", "batch"), [("ddim", 1), ("euler-a", 1), ("dpm-multi", 2), ("pndm", 1)])
def test_nine_channel_inpainting_matches_diffusers(
    inpaint_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    batch: int,
) -> None:
    gen = generation(INPAINT, scheduler, batch=batch)
    reference = torch_reference(torch_parts(INPAINT), inpaint_model, gen, monkeypatch)
    assert_matches(
        pixels(inpaint(Run(inpaint_model, gen), gradient(), mask_image())), reference, (batch, 48, 64, 3)
    )


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "lms-discrete"])
def test_four_channel_inpainting_matches_diffusers(
    demo_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
) -> None:
    gen = generation(BASE, scheduler)
    reference = torch_reference(torch_parts(BASE), demo_model, gen, monkeypatch)
    assert_matches(pixels(inpaint(Run(demo_model, gen), gradient(), mask_image())), reference)


def test_mask_is_binarized_at_half() -> None:
    mask = Image.fromarray(np.array([[0, 127, 128, 255]] * 8, dtype=np.uint8))
    assert mask_to_array(mask, (4, 8))[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def stage_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **RESOLVED,
        "model": INPAINT,
        "pipeline": "inpaint",  # what the api resolves for the inpaint route
        "scheduler": "ddim",
        "prompt": "a red door",
        "negative_prompt": None,
        "seed": 3,
        "steps": 3,
        "cfg": 6.0,
        "batch": 1,
        "fill_color": "white",
        "stage_name": "inpaint",
    }
    return {**params, **changes}


def test_stage_inpaints_each_input_with_the_stage_mask(models_path: Path, sessions: SessionCache) -> None:
    steps: list[int] = []
    ctx = StageContext(
        models_path=models_path,
        sessions=sessions,
        inputs={"mask:inpaint": mask_image()},
        on_step=steps.append,
    )
    source = StageImage(gradient(), {"input_size": {"width": 64, "height": 48}})
    results = run_stage(upscale_outpaint.STAGE, ctx, stage_params(batch=2), [source])
    assert len(results) == 2
    assert results[0].image.size == (64, 48)
    assert results[0].metadata["params"]["pipeline"] == "inpaint"
    assert results[0].metadata["models"][0]["name"] == INPAINT
    assert sum(steps) == 3 == upscale_outpaint.STAGE.estimate(stage_params())


def test_stage_passes_images_with_an_all_black_mask_through(
    models_path: Path, sessions: SessionCache
) -> None:
    ctx = StageContext(
        models_path=models_path,
        sessions=sessions,
        inputs={"mask:inpaint": Image.new("RGB", (64, 48), "black")},
    )
    source = StageImage(gradient(), {"params": {"prompt": "kept"}})
    assert run_stage(upscale_outpaint.STAGE, ctx, stage_params(), [source]) == [source]


def test_stage_needs_a_mask(models_path: Path, sessions: SessionCache) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    with pytest.raises(ValueError, match="needs a mask"):
        run_stage(upscale_outpaint.STAGE, ctx, stage_params(), [StageImage(gradient(), {})])


def test_ipndm_inpaints_only_with_an_inpainting_unet(
    demo_model: DiffusionModel, inpaint_model: DiffusionModel
) -> None:
    # The 9-channel UNet never noises the source; a 4-channel one must, and ipndm cannot.
    assert len(inpaint(Run(inpaint_model, generation(INPAINT, "ipndm")), gradient(), mask_image())) == 1
    with pytest.raises(ValueError, match="cannot start from an image"):
        inpaint(Run(demo_model, generation(BASE, "ipndm")), gradient(), mask_image())


def test_a_tiled_batch_with_a_mask_that_keeps_everything_is_the_one_image(
    models_path: Path, sessions: SessionCache
) -> None:
    from pipelines.chain import run_chain

    params = {**stage_params(batch=2), "overlap": 0.5, "tile_order": "grid", "prompt_index": 0}
    params.update(fullres=False, fullres_padding=1.2)
    stage = {"name": "inpaint", "type": "upscale-outpaint", "params": params, "tiles": 64}
    source = gradient(96, 64)
    result = run_chain(
        {"stages": [stage], "sources": ["source"]},
        models_path=models_path,
        sessions=sessions,
        inputs={"source": source, "mask:inpaint": Image.new("L", (96, 64), 0)},
    )
    # As untiled: nothing to repaint, so the upload once, not a copy of it per batch image.
    [output] = result.outputs
    assert np.array_equal(np.asarray(output.image), np.asarray(source))

"""SDXL img2img and inpainting against diffusers' PyTorch SDXL img2img and inpaint pipelines, same weights.

The demo SDXL model is random and tiny: what matters is that SD's img2img and inpaint, run on an
``SdxlRun``, add SDXL's conditioning to exactly diffusers' strength schedule, noise and mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import Callbacks, DiffusionModel, Generation, Run, load_model, pad_to_grid
from pipelines.diffusion.sdxl import SdxlRun, diffusion_run
from pipelines.models.demo import DEMO_MODELS, DEMO_SDXL
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img, upscale_outpaint
from tests.unit.pipelines.images import gradient, mask_image, pixels
from tests.unit.pipelines.reference import (
    assert_matches,
    demo_generation,
    img2img_reference,
    inpaint_reference,
)
from tests.unit.pipelines.resolved import RESOLVED, run_stage

#: What these tests generate unless they say otherwise.
BASE = demo_generation(
    model=DEMO_SDXL, prompt="a painting of a house", negative_prompt="blurry", seed=5, steps=6, cfg=5.0
)
#: What an SDXL pipeline is built with besides its modules and scheduler.
NO_WATERMARK = {"add_watermarker": False}


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    """The demo SDXL model on ONNX Runtime (built with the other demo models)."""
    return load_model(models_path, DEMO_SDXL, sessions)


def generation(scheduler: str, **changes: Any) -> Generation:
    return dataclasses.replace(BASE, scheduler=scheduler, **changes)


def sdxl_img2img_reference(
    parts: dict[str, Any],
    model: DiffusionModel,
    gen: Generation,
    strength: float,
    monkeypatch: pytest.MonkeyPatch,
) -> np.ndarray:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as module

    pipeline = StableDiffusionXLImg2ImgPipeline
    return img2img_reference(pipeline, module, parts, model, gen, strength, monkeypatch, NO_WATERMARK)


@pytest.mark.parametrize(
    ("scheduler", "strength", "batch"),
    [("ddim", 0.5, 1), ("euler-a", 0.7, 1), ("dpm-multi", 0.5, 2), ("heun", 0.5, 1)],
)
def test_sdxl_img2img_matches_diffusers_torch_pipeline(
    sdxl_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    strength: float,
    batch: int,
) -> None:
    gen = generation(scheduler, batch=batch)
    reference = sdxl_img2img_reference(torch_parts(DEMO_SDXL), sdxl_model, gen, strength, monkeypatch)
    ours = pixels(img2img(SdxlRun(sdxl_model, gen), gradient(), strength))
    assert_matches(ours, reference, (batch, 48, 64, 3))


def sdxl_inpaint_reference(
    parts: dict[str, Any], model: DiffusionModel, gen: Generation, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    from diffusers import StableDiffusionXLInpaintPipeline
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_inpaint as module

    # Inpainting runs the whole schedule from noise, as onnx-web's does: strength 1, not
    # diffusers' default 0.9999 (which drops a step).
    pipeline = StableDiffusionXLInpaintPipeline
    return inpaint_reference(pipeline, module, parts, model, gen, monkeypatch, NO_WATERMARK, strength=1.0)


@pytest.mark.parametrize(("scheduler", "batch"), [("ddim", 1), ("euler", 2), ("lms-discrete", 1)])
def test_sdxl_four_channel_inpainting_matches_diffusers(
    sdxl_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    batch: int,
) -> None:
    gen = generation(scheduler, batch=batch, negative_prompt=None)
    reference = sdxl_inpaint_reference(torch_parts(DEMO_SDXL), sdxl_model, gen, monkeypatch)
    ours = pixels(inpaint(SdxlRun(sdxl_model, gen), gradient(), mask_image()))
    assert_matches(ours, reference, (batch, 48, 64, 3))


def test_sdxl_runs_by_model_folder_or_pipeline_name(
    sdxl_model: DiffusionModel, demo_model: DiffusionModel
) -> None:
    sd_generation = dataclasses.replace(BASE, model=DEMO_MODELS[0].name)
    hooks = Callbacks()
    assert type(diffusion_run({"pipeline": "img2img"}, sdxl_model, BASE, hooks)) is SdxlRun
    assert type(diffusion_run({"pipeline": "inpaint"}, sdxl_model, BASE, hooks)) is SdxlRun
    assert type(diffusion_run({"pipeline": "img2img-sdxl"}, demo_model, sd_generation, hooks)) is SdxlRun
    assert type(diffusion_run({"pipeline": "img2img"}, demo_model, sd_generation, hooks)) is Run


def stage_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **RESOLVED,
        "model": DEMO_SDXL,
        "pipeline": "img2img",  # what the api resolves for the img2img route
        "scheduler": "euler",
        "prompt": "a red door",
        "negative_prompt": None,
        "seed": 3,
        "steps": 4,
        "cfg": 6.0,
        "batch": 1,
        "strength": 0.5,
        "fill_color": "white",
        "stage_name": "stage",
    }
    return {**params, **changes}


@pytest.mark.parametrize(("steps", "strength", "expected"), [(10, 0.5, 5), (10, 0.05, 1), (3, 1.0, 3)])
def test_img2img_stage_runs_sdxl_and_counts_its_steps(
    sdxl_model: DiffusionModel,
    models_path: Path,
    sessions: SessionCache,
    steps: int,
    strength: float,
    expected: int,
) -> None:
    counted: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=counted.append)
    params = stage_params(steps=steps, strength=strength)
    results = run_stage(blend_img2img.STAGE, ctx, params, [StageImage(gradient(), {})])
    assert sum(counted) == expected == blend_img2img.STAGE.estimate(params)
    gen = generation(
        "euler", prompt="a red door", negative_prompt=None, seed=3, steps=steps, cfg=6.0, height=64
    )
    # The stage pads 48 rows to the UNet's 64 and crops back: the crop is SDXL img2img's own image.
    direct = img2img(SdxlRun(sdxl_model, gen), pad_to_grid(gradient()), strength)[0].crop((0, 0, 64, 48))
    assert np.array_equal(np.asarray(direct), np.asarray(results[0].image))


def test_inpaint_stage_runs_sdxl_and_keeps_the_black_part_of_the_mask(
    models_path: Path, sessions: SessionCache
) -> None:
    counted: list[int] = []
    ctx = StageContext(
        models_path=models_path,
        sessions=sessions,
        inputs={"mask:stage": mask_image()},
        on_step=counted.append,
    )
    params = stage_params(pipeline="inpaint", steps=3)
    results = run_stage(upscale_outpaint.STAGE, ctx, params, [StageImage(gradient(), {})])
    assert sum(counted) == 3
    keep = np.asarray(mask_image().convert("L")) == 0
    source, painted = pixels([gradient()])[0], pixels([results[0].image])[0]
    assert np.array_equal(painted[keep], source[keep])
    assert np.abs(painted[~keep] - source[~keep]).mean() > 10
    assert results[0].metadata["params"]["pipeline"] == "inpaint"

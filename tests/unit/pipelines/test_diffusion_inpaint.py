"""Inpainting on the demo models, against diffusers' StableDiffusionInpaintPipeline on the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.inpaint import inpaint, mask_to_array
from pipelines.diffusion.model import DiffusionModel, Generation, initial_latents
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import SessionCache
from pipelines.stages import upscale_outpaint
from tests.unit.pipelines.resolved import RESOLVED, run_stage

MAX_LEVEL_DIFF = 2
BASE, INPAINT = (model.name for model in DEMO_MODELS)


def source_image(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def mask_image(width: int = 64, height: int = 48) -> Image.Image:
    """White (repaint) in a box off the latent grid, so resizing and binarizing matter."""
    mask = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(mask).rectangle((13, 9, 45, 37), fill="white")
    return mask


def generation(model: str, scheduler: str, **changes: Any) -> Generation:
    values: dict[str, Any] = {
        "model": model,
        "scheduler": scheduler,
        "prompt": "a red door",
        "negative_prompt": "blurry",
        "seed": 11,
        "steps": 5,
        "cfg": 7.0,
        "eta": 0.0,
        "batch": 1,
        "width": 64,
        "height": 48,
    }
    return Generation(**{**values, **changes})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def torch_reference(
    parts: dict[str, Any], model: DiffusionModel, gen: Generation, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as module

    # Our VAE encoder returns the latent mode where diffusers samples it.
    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    pipe = StableDiffusionInpaintPipeline(
        **parts,
        scheduler=make_scheduler(gen.scheduler, load_scheduler_config(model.folder), seed=gen.seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        gen.prompt,
        image=source_image(gen.width, gen.height),
        mask_image=mask_image(gen.width, gen.height),
        width=gen.width,
        height=gen.height,
        negative_prompt=gen.negative_prompt,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        eta=gen.eta,
        num_images_per_prompt=gen.batch,
        latents=torch.from_numpy(initial_latents(gen.seed, gen.batch, gen.width, gen.height)),
        generator=torch.Generator().manual_seed(gen.seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.int16)


@pytest.mark.parametrize(("scheduler", "batch"), [("ddim", 1), ("euler-a", 1), ("dpm-multi", 2), ("pndm", 1)])
def test_nine_channel_inpainting_matches_diffusers(
    inpaint_model: DiffusionModel,
    inpaint_torch_parts: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    batch: int,
) -> None:
    gen = generation(INPAINT, scheduler, batch=batch)
    ours = pixels(inpaint(inpaint_model, gen, source_image(), mask_image()))
    reference = torch_reference(inpaint_torch_parts, inpaint_model, gen, monkeypatch)
    assert ours.shape == reference.shape == (batch, 48, 64, 3)
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "lms-discrete"])
def test_four_channel_inpainting_matches_diffusers(
    demo_model: DiffusionModel, torch_parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    gen = generation(BASE, scheduler)
    ours = pixels(inpaint(demo_model, gen, source_image(), mask_image()))
    reference = torch_reference(torch_parts, demo_model, gen, monkeypatch)
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


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


class Steps:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, n: int = 1) -> None:
        self.count += n


def test_stage_inpaints_each_input_with_the_stage_mask(models_path: Path, sessions: SessionCache) -> None:
    steps = Steps()
    ctx = StageContext(
        models_path=models_path, sessions=sessions, inputs={"mask:inpaint": mask_image()}, on_step=steps
    )
    source = StageImage(source_image(), {"input_size": {"width": 64, "height": 48}})
    results = run_stage(upscale_outpaint.STAGE, ctx, stage_params(batch=2), [source])
    assert len(results) == 2
    assert results[0].image.size == (64, 48)
    assert results[0].metadata["params"]["pipeline"] == "inpaint"
    assert results[0].metadata["models"][0]["name"] == INPAINT
    assert steps.count == 3 == upscale_outpaint.STAGE.estimate(stage_params())


def test_stage_passes_images_with_an_all_black_mask_through(
    models_path: Path, sessions: SessionCache
) -> None:
    ctx = StageContext(
        models_path=models_path,
        sessions=sessions,
        inputs={"mask:inpaint": Image.new("RGB", (64, 48), "black")},
    )
    source = StageImage(source_image(), {"params": {"prompt": "kept"}})
    assert run_stage(upscale_outpaint.STAGE, ctx, stage_params(), [source]) == [source]


def test_stage_needs_a_mask(models_path: Path, sessions: SessionCache) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    with pytest.raises(ValueError, match="needs a mask"):
        run_stage(upscale_outpaint.STAGE, ctx, stage_params(), [StageImage(source_image(), {})])


def test_ipndm_inpaints_only_with_an_inpainting_unet(
    demo_model: DiffusionModel, inpaint_model: DiffusionModel
) -> None:
    # The 9-channel UNet never noises the source; a 4-channel one must, and ipndm cannot.
    assert len(inpaint(inpaint_model, generation(INPAINT, "ipndm"), source_image(), mask_image())) == 1
    with pytest.raises(ValueError, match="cannot start from an image"):
        inpaint(demo_model, generation(BASE, "ipndm"), source_image(), mask_image())

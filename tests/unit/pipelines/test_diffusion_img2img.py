"""img2img on the demo model, against diffusers' StableDiffusionImg2ImgPipeline on the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.model import DiffusionModel, Generation, initial_latents
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img
from tests.unit.pipelines.resolved import RESOLVED, run_stage

MAX_LEVEL_DIFF = 2


def source_image(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth colour gradient: structure the VAE can keep, so strength visibly matters."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def generation(scheduler: str, **changes: Any) -> Generation:
    values: dict[str, Any] = {
        "model": DEMO_MODELS[0].name,
        "scheduler": scheduler,
        "prompt": "a painting of a house",
        "negative_prompt": "blurry",
        "seed": 5,
        "steps": 6,
        "cfg": 5.0,
        "eta": 0.0,
        "batch": 1,
        "width": 64,
        "height": 48,
    }
    return Generation(**{**values, **changes})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def torch_reference(
    parts: dict[str, Any],
    model: DiffusionModel,
    gen: Generation,
    strength: float,
    monkeypatch: pytest.MonkeyPatch,
) -> np.ndarray:
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    # Like with like: our VAE encoder returns the latent mode (diffusers samples it) and our
    # noise is onnx-web's numpy draw (diffusers draws from the generator).
    noise = torch.from_numpy(initial_latents(gen.seed, gen.batch, gen.width, gen.height))
    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kwargs: noise.clone())
    pipe = StableDiffusionImg2ImgPipeline(
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
        strength=strength,
        negative_prompt=gen.negative_prompt,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        eta=gen.eta,
        num_images_per_prompt=gen.batch,
        generator=torch.Generator().manual_seed(gen.seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.int16)


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
    torch_parts: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    strength: float,
    batch: int,
) -> None:
    gen = generation(scheduler, batch=batch)
    ours = pixels(img2img(demo_model, gen, source_image(), strength))
    reference = torch_reference(torch_parts, demo_model, gen, strength, monkeypatch)
    assert ours.shape == reference.shape == (batch, 48, 64, 3)
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


def test_strength_decides_how_far_the_image_moves(demo_model: DiffusionModel) -> None:
    source = pixels([source_image()])
    light = pixels(img2img(demo_model, generation("ddim"), source_image(), 0.2))
    heavy = pixels(img2img(demo_model, generation("ddim"), source_image(), 1.0))
    assert np.abs(light - source).mean() < np.abs(heavy - source).mean()


class Counter:
    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, n: int = 1) -> None:
        self.steps += n


@pytest.mark.parametrize(
    ("steps", "strength", "expected"), [(10, 0.5, 5), (10, 0.05, 1), (3, 1.0, 3), (7, 0.3, 2)]
)
def test_stage_reports_the_steps_it_runs(
    models_path: Path, sessions: SessionCache, steps: int, strength: float, expected: int
) -> None:
    counter = Counter()
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=counter)
    params = {**stage_params(), "steps": steps, "strength": strength}
    run_stage(blend_img2img.STAGE, ctx, params, [StageImage(source_image(), {})])
    assert counter.steps == expected == blend_img2img.STAGE.estimate(params)


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
        StageImage(
            source_image(), {"input_size": {"width": 32, "height": 24}, "highres": {"enabled": False}}
        ),
        StageImage(source_image(70, 52), {}),
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
    ctx = StageContext(models_path=models_path, sessions=sessions, inputs={"source:refine": source_image()})
    assert len(run_stage(blend_img2img.STAGE, ctx, stage_params(), [])) == 2
    with pytest.raises(ValueError, match="needs an input image"):
        run_stage(
            blend_img2img.STAGE, StageContext(models_path=models_path, sessions=sessions), stage_params(), []
        )


def test_schedulers_that_cannot_noise_an_image_are_refused(demo_model: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="scheduler 'ipndm' cannot start from an image"):
        img2img(demo_model, generation("ipndm"), source_image(), 0.5)

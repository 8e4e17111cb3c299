"""Our ONNX txt2img against diffusers' own pipelines on the very same weights and noise.

The demo model is random, so its images mean nothing; what matters is that every scheduler call,
the guidance arithmetic and the image post-processing match diffusers to within rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipelines.diffusion.model import DiffusionModel, Generation, initial_latents
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
from pipelines.diffusion.txt2img import txt2img

#: Two of 255 levels: ONNX Runtime and PyTorch differ by ~1e-6, which rounding can turn into one.
MAX_LEVEL_DIFF = 2
REFERENCE_SCHEDULERS = [
    "ddim",
    "euler",
    "euler-a",
    "dpm-multi",
    "pndm",
    "lms-discrete",
    "unipc-multi",
    "heun",
    "lcm",
]


def generation(scheduler: str, **changes: Any) -> Generation:
    values: dict[str, Any] = {
        "model": "stable-diffusion-onnx-v1-5",
        "scheduler": scheduler,
        "prompt": "a photo of a cat sitting on a red chair",
        "negative_prompt": "blurry, lowres",
        "seed": 1234,
        "steps": 5,
        "cfg": 6.0,
        "eta": 0.0,
        "batch": 1,
        "width": 64,
        "height": 48,
    }
    return Generation(**{**values, **changes})


def pixels(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


def torch_reference(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' PyTorch StableDiffusionPipeline, given our starting noise and step generator."""
    from diffusers import StableDiffusionPipeline

    scheduler = make_scheduler(gen.scheduler, load_scheduler_config(model.folder), seed=gen.seed)
    pipe = StableDiffusionPipeline(
        **parts,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # diffusers multiplies given latents by init_noise_sigma itself, as we do: pass the raw noise.
    images = pipe(
        gen.prompt,
        negative_prompt=gen.negative_prompt,
        width=gen.width,
        height=gen.height,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        eta=gen.eta,
        num_images_per_prompt=gen.batch,
        latents=torch.from_numpy(initial_latents(gen.seed, gen.batch, gen.width, gen.height)),
        generator=torch.Generator().manual_seed(gen.seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.int16)


@pytest.mark.parametrize("scheduler", REFERENCE_SCHEDULERS)
def test_txt2img_matches_diffusers_torch_pipeline(
    demo_model: DiffusionModel, torch_parts: dict[str, Any], scheduler: str
) -> None:
    gen = generation(scheduler)
    ours = pixels(txt2img(demo_model, gen))
    reference = torch_reference(torch_parts, demo_model, gen)
    assert ours.shape == reference.shape == (1, 48, 64, 3)
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"batch": 2, "scheduler": "euler-a"}, id="batch2-euler-a"),
        pytest.param({"cfg": 1.0}, id="no-guidance"),
        pytest.param({"negative_prompt": None, "eta": 0.7}, id="no-negative-ddim-eta"),
    ],
)
def test_txt2img_variants_match_diffusers_torch_pipeline(
    demo_model: DiffusionModel, torch_parts: dict[str, Any], changes: dict[str, Any]
) -> None:
    gen = generation(changes.pop("scheduler", "ddim"), **changes)
    ours = pixels(txt2img(demo_model, gen))
    reference = torch_reference(torch_parts, demo_model, gen)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


def onnx_reference(model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' OnnxStableDiffusionPipeline on our exported files."""
    from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline

    def component(name: str) -> Any:
        # OnnxRuntimeModel.from_pretrained raises KeyError('provider_options') in diffusers 0.42.1.
        return OnnxRuntimeModel(model=model.session(name))

    pipe = OnnxStableDiffusionPipeline(
        vae_encoder=component("vae_encoder"),
        vae_decoder=component("vae_decoder"),
        text_encoder=component("text_encoder"),
        tokenizer=model.tokenizer,
        unet=component("unet"),
        scheduler=make_scheduler(gen.scheduler, load_scheduler_config(model.folder)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        gen.prompt,
        negative_prompt=gen.negative_prompt,
        width=gen.width,
        height=gen.height,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        eta=gen.eta,
        latents=initial_latents(gen.seed, gen.batch, gen.width, gen.height),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.int16)


# The ONNX pipeline computes ``ndarray * init_noise_sigma``, which raises for the schedulers whose
# sigma is a tensor (euler, euler-a, heun, lms-discrete, k-dpm-2, k-dpm-2-a, dpm-sde), and it never
# passes a generator to ``step``, so the stochastic ones (ddpm, lcm) draw other noise than ours.
@pytest.mark.parametrize(
    "scheduler", ["ddim", "pndm", "dpm-multi", "dpm-single", "deis-multi", "unipc-multi", "ipndm"]
)
def test_txt2img_matches_diffusers_onnx_pipeline(demo_model: DiffusionModel, scheduler: str) -> None:
    gen = generation(scheduler)
    ours = pixels(txt2img(demo_model, gen))
    reference = onnx_reference(demo_model, gen)
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF

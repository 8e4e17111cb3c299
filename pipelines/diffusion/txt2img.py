"""Stable Diffusion 1.x text-to-image on ONNX Runtime."""

from __future__ import annotations

import logging

from PIL import Image

from pipelines.diffusion.model import (
    CancelCheck,
    DiffusionModel,
    Generation,
    StepCallback,
    decode_latents,
    denoise,
    encode_prompt,
    initial_latents,
    parse_prompts,
)
from pipelines.gpu.runtime import gpu_settings

logger = logging.getLogger(__name__)


def txt2img(
    model: DiffusionModel,
    generation: Generation,
    *,
    on_step: StepCallback = lambda n: None,
    check_cancelled: CancelCheck = lambda: None,
) -> list[Image.Image]:
    """Generate ``generation.batch`` images of ``width`` x ``height`` from onnx-web's seeded noise."""
    if gpu_settings(model.sessions) is not None:
        from pipelines.gpu.batch import run_txt2img

        return run_txt2img(model, generation, on_step, check_cancelled)
    prompt, negative = parse_prompts(generation)
    if prompt.clip_skip:
        logger.warning(
            "<clip:skip:%d> needs a text encoder exported with hidden states; ignored", prompt.clip_skip
        )
    embeddings = encode_prompt(model, prompt.text, negative.text if negative else None, generation)
    scheduler = model.scheduler(generation.scheduler, generation.seed)
    scheduler.set_timesteps(generation.steps)
    noise = initial_latents(generation.seed, generation.batch, generation.width, generation.height)
    # init_noise_sigma is a tensor for the Karras-style schedulers; float() keeps numpy maths.
    latents = noise * float(scheduler.init_noise_sigma)
    latents = denoise(
        model,
        scheduler,
        latents,
        embeddings,
        generation,
        timesteps=scheduler.timesteps,
        steps=generation.steps,
        on_step=on_step,
        check_cancelled=check_cancelled,
    )
    return decode_latents(model, latents, generation.vae_tiling)

"""Stable Diffusion 1.x text-to-image on ONNX Runtime."""

from __future__ import annotations

import logging

from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.gpu.runtime import gpu_settings

logger = logging.getLogger(__name__)


def txt2img(
    model: sd.DiffusionModel,
    generation: sd.Generation,
    *,
    on_step: sd.StepCallback = lambda n: None,
    check_cancelled: sd.CancelCheck = lambda: None,
) -> list[Image.Image]:
    """Generate ``generation.batch`` images of ``width`` x ``height`` from onnx-web's seeded noise."""
    if gpu_settings(model.sessions) is not None:
        from pipelines.gpu.batch import run_txt2img

        return run_txt2img(model, generation, on_step, check_cancelled)
    prompt, negative = sd.parse_prompts(generation)
    if prompt.clip_skip:
        logger.warning(
            "<clip:skip:%d> needs a text encoder exported with hidden states; ignored", prompt.clip_skip
        )
    embeddings = sd.encode_prompt(model, prompt.text, negative.text if negative else None, generation)
    scheduler = model.scheduler(generation.scheduler, generation.seed)
    scheduler.set_timesteps(generation.steps)
    noise = sd.initial_latents(generation.seed, generation.batch, generation.width, generation.height)
    # init_noise_sigma is a tensor for the Karras-style schedulers; float() keeps numpy maths.
    latents = noise * float(scheduler.init_noise_sigma)
    latents = sd.denoise(
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
    return sd.decode_latents(model, latents, generation.vae_tiling)

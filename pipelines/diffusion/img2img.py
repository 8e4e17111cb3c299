"""Stable Diffusion 1.x image-to-image on ONNX Runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.schedulers import require_add_noise


def strength_steps(steps: int, strength: float) -> int:
    """Scheduler steps img2img runs: the last ``strength`` of ``steps``, at least one.

    diffusers runs ``int(steps * strength)``, which is zero for small strengths and then fails;
    one step still lets a small strength touch the image, as the progress estimate promises.
    """
    return max(1, min(int(steps * strength), steps))


def strength_timesteps(scheduler: Any, steps: int, strength: float) -> tuple[Any, int]:
    """The tail of the schedule img2img starts from, and its number of scheduler steps."""
    run = strength_steps(steps, strength)
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], run


def img2img(run: sd.Run, source: Image.Image, strength: float) -> list[Image.Image]:
    """Re-generate ``source`` (a multiple of 8 pixels on each side) with ``strength`` of noise."""
    embeddings = run.embeddings_by_call()
    scheduler = run.scheduler()
    latents, timesteps, steps = noised_source(run, scheduler, source, strength)
    return run.decode(run.denoise(scheduler, latents, embeddings, timesteps=timesteps, steps=steps))


def noised_source(
    run: sd.Run, scheduler: Any, source: Image.Image, strength: float
) -> tuple[np.ndarray, Any, int]:
    """Where img2img starts: the source's latents noised for the shortened schedule's first timestep.

    The noise is onnx-web's seeded latents, added to the VAE latents of ``source`` (one copy per
    batch image). Returns the latents, the timesteps left to run and their number of scheduler steps.
    """
    import torch

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    generation = run.generation
    require_add_noise(scheduler, generation.scheduler)
    timesteps, steps = strength_timesteps(scheduler, generation.steps, strength)
    image_latents = np.repeat(
        sd.encode_image(run.model, sd.image_to_array(source), generation.vae_tiling), generation.batch, axis=0
    )
    noise = sd.initial_latents(generation.seed, generation.batch, source.width, source.height)
    latents = scheduler.add_noise(
        torch.from_numpy(image_latents), torch.from_numpy(noise), timesteps[:1].repeat(generation.batch)
    ).numpy()
    return latents, timesteps, steps

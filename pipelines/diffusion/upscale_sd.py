"""The Stable Diffusion x4 upscaler on ONNX Runtime: a prompt-guided enlargement by 4.

The numerics follow diffusers' ``StableDiffusionUpscalePipeline`` step for step: the input image,
noised by the DDPM ``low_res_scheduler`` to the requested noise level, is appended to the latents
as three more UNet channels at every step; the noise level is the UNet's class label; the latents
are the size of the input and the VAE (4 pixels per latent cell) decodes them to 4 times that.

The noise comes from ``default_rng(seed)``, like every pipeline here: its first draw is the
starting latents, its second the noise added to the input image.

Its loop reports progress but no latents (``on_latents``): they live in the x4 VAE's own space,
which no preview decoder (``pipelines.diffusion.preview``) reads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.schedulers import make_scheduler

#: The noise level of diffusers' pipeline when none is asked for.
DEFAULT_NOISE_LEVEL = 20
#: The release's ``max_noise_level``, for folders whose index does not say.
DEFAULT_MAX_NOISE_LEVEL = 350
#: The noise level of ``denoise`` 1: twice diffusers' default, so the GUI's default 0.5 is that default.
DENOISE_FULL_LEVEL = 2 * DEFAULT_NOISE_LEVEL
#: The x4 UNet halves its latents three times, and its latents are the input's pixels.
UPSCALER_GRID = 8
LOW_RES_SCHEDULER = "low_res_scheduler"


def noise_level(denoise: float | None, maximum: int = DEFAULT_MAX_NOISE_LEVEL) -> int:
    """The upscaler's noise level for a stage's ``denoise`` param.

    onnx-web's upscale ``denoise`` is a strength from 0 to 1 (the GUI's slider, default 0.5),
    which its ONNX pipeline truncated to an integer noise level: 0 for anything below 1, so the
    slider did nothing. Here a value up to 1 is that strength over the levels the upscaler is
    faithful at: ``round(denoise * DENOISE_FULL_LEVEL)``, so the default 0.5 is diffusers' own
    default of 20 and 1 is 40 (the model's range goes to 350, where little of the input is left).
    A value above 1 is the noise level itself and must be an integer up to ``maximum``. Missing:
    diffusers' default.
    """
    if denoise is None:
        return DEFAULT_NOISE_LEVEL
    if denoise < 0:
        raise ValueError(f"denoise must be >= 0, got {denoise}")
    if denoise <= 1:
        return min(round(denoise * DENOISE_FULL_LEVEL), maximum)
    if denoise != int(denoise) or denoise > maximum:
        raise ValueError(f"denoise above 1 is a noise level: an integer up to {maximum}, got {denoise}")
    return int(denoise)


@lru_cache(maxsize=16)
def max_noise_level(folder: Path) -> int:
    """The highest noise level the upscaler in ``folder`` was trained with (its index records it)."""
    index = json.loads((folder / "model_index.json").read_text())
    return int(index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL))


def upscale_noise(seed: int, batch: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``default_rng(seed)``'s starting latents ``(batch, 4, h, w)``, then the image noise
    ``(1, 3, h, w)``."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, sd.LATENT_CHANNELS, height, width)).astype(np.float32)
    image_noise = rng.standard_normal((1, 3, height, width)).astype(np.float32)
    return latents, image_noise


def upscale_sd(run: sd.Run, source: Image.Image, level: int) -> list[Image.Image]:
    """``generation.batch`` enlargements of ``source`` by the VAE's factor, at noise level ``level``.

    Sides off the UNet's 8-pixel grid are padded with their edge pixels and cropped back after.
    """
    import torch

    run = replace(run, hooks=sd.Callbacks(run.hooks.on_step, run.hooks.check_cancelled))
    model, generation = run.model, run.generation
    maximum = max_noise_level(model.folder)
    if not 0 <= level <= maximum:
        raise ValueError(f"noise level must be from 0 to {maximum}, got {level}")
    embeddings = run.prompt_embeddings()
    scheduler = run.scheduler()
    low_res_config = json.loads((model.folder / LOW_RES_SCHEDULER / "scheduler_config.json").read_text())
    low_res_scheduler = make_scheduler("ddpm", low_res_config)

    padded = sd.pad_to_grid(source.convert("RGB"), grid=UPSCALER_GRID)
    noise, image_noise = upscale_noise(generation.seed, generation.batch, padded.width, padded.height)
    noisy_image = low_res_scheduler.add_noise(
        torch.from_numpy(sd.image_to_array(padded)), torch.from_numpy(image_noise), torch.tensor([level])
    ).numpy()
    # One copy of the image and its noise level per UNet batch item (doubled for guidance).
    copies = generation.batch * (2 if generation.guidance else 1)
    latents = run.denoise(
        scheduler,
        noise * float(scheduler.init_noise_sigma),
        embeddings,
        conditioning=np.repeat(noisy_image, copies, axis=0),
        extra_inputs={"class_labels": np.full((copies,), level, dtype=np.int64)},
    )
    factor = model.vae_factor
    return [
        image.crop((0, 0, source.width * factor, source.height * factor)) for image in run.decode(latents)
    ]

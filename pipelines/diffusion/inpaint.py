"""Stable Diffusion 1.x inpainting on ONNX Runtime: repaint where the mask is white.

An inpainting UNet (9 input channels: latents, mask, masked-image latents) sees the kept region
through its extra channels. A plain 4-channel UNet is used the way diffusers does: after every
step the kept region's latents are put back, noised to the next timestep. Inpainting always
runs the whole schedule from noise (onnx-web ignores ``strength`` here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.schedulers import require_add_noise

INPAINT_CHANNELS = 9


def mask_to_array(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A ``(1, 1, H, W)`` mask of 0 (keep) and 1 (repaint), resized and binarized as diffusers does."""
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    values = np.asarray(mask, dtype=np.float32) / 255.0
    binary: np.ndarray = (values >= 0.5).astype(np.float32)[None, None]
    return binary


def inpaint(run: sd.Run, source: Image.Image, mask: Image.Image) -> list[Image.Image]:
    """Repaint the white part of ``mask`` in ``source`` (a multiple of 8 pixels on each side)."""
    generation = run.generation
    embeddings = run.embeddings_by_call()
    scheduler = run.scheduler()
    noise = sd.initial_latents(generation.seed, generation.batch, source.width, source.height)
    conditioning, after_step = inpaint_inputs(run, scheduler, source, mask, noise)
    latents = noise * float(scheduler.init_noise_sigma)
    return run.decode(
        run.denoise(scheduler, latents, embeddings, conditioning=conditioning, after_step=after_step)
    )


def inpaint_inputs(
    run: sd.Run, scheduler: Any, source: Image.Image, mask: Image.Image, noise: np.ndarray
) -> tuple[np.ndarray | None, Callable[[int, Any], Any] | None]:
    """What the UNet loop needs to repaint ``mask``'s white part over the whole of ``source``.

    For an inpainting UNet: the channels joined to its input (the latent mask and the masked
    image's latents, doubled for guidance), no step hook. For a plain UNet: no channels, and the
    step hook that puts the kept region back, ``noise`` noised to the next timestep (``noise`` is
    the loop's starting noise, unscaled, one row per batch image).
    """
    import torch

    model, generation = run.model, run.generation
    pixels = sd.image_to_array(source)
    binary = mask_to_array(mask, source.size)
    # Nearest-neighbour down-sampling by the latent factor, as torch's default interpolate does.
    latent_mask = np.repeat(binary[:, :, :: sd.LATENT_FACTOR, :: sd.LATENT_FACTOR], generation.batch, axis=0)
    if sd.unet_channels(model) == INPAINT_CHANNELS:
        masked_latents = np.repeat(
            sd.encode_image(model, pixels * (binary < 0.5), generation.vae_tiling), generation.batch, axis=0
        )
        conditioning = np.concatenate([latent_mask, masked_latents], axis=1)
        if generation.guidance:
            conditioning = np.concatenate([conditioning, conditioning])
        return conditioning, None

    require_add_noise(scheduler, generation.scheduler)
    timesteps = scheduler.timesteps
    image_latents = torch.from_numpy(
        np.repeat(sd.encode_image(model, pixels, generation.vae_tiling), generation.batch, axis=0)
    )
    keep = torch.from_numpy(latent_mask)
    start_noise = torch.from_numpy(noise)

    def keep_unmasked(index: int, sample: Any) -> Any:
        proper = image_latents
        if index < len(timesteps) - 1:
            proper = scheduler.add_noise(image_latents, start_noise, torch.tensor([timesteps[index + 1]]))
        return (1 - keep) * proper + keep * sample

    return None, keep_unmasked

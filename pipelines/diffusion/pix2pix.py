"""InstructPix2Pix (``pix2pix``): edit a source image as the prompt instructs, on ONNX Runtime.

An InstructPix2Pix UNet has 8 input channels: the noisy latents and the source image's latents.
The numerics follow diffusers' ``StableDiffusionInstructPix2PixPipeline``: the source latents are
the VAE encoder's mode, unscaled; the whole schedule runs from onnx-web's seeded noise; guidance
is three-way, each UNet call seeing rows ``[prompt, negative, negative]`` beside source latents
``[image, image, zeros]``, mixed as ``uncond + cfg * (text - image) + image_cfg * (image - uncond)``.

The request's ``strength`` is the image guidance scale (features §1.3), as in onnx-web. As in
diffusers, guidance runs only with ``cfg > 1`` *and* an image guidance scale of at least 1: with
the api's strength range (0-1) that is ``strength`` 1; below it the UNet runs once per step on
the prompt alone, the source image still in its extra channels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.panorama import UNet
from pipelines.diffusion.schedulers import step_arguments

#: Input channels of an InstructPix2Pix UNet: 4 of latents, 4 of source-image latents.
PIX2PIX_CHANNELS = 8
#: The pipeline name (contract §5.5) that runs this module.
PIX2PIX = "pix2pix"


def check_unet(model: sd.DiffusionModel, name: str, pipeline: str) -> None:
    """Refuse a pix2pix run on another UNet, and any other img2img on an InstructPix2Pix UNet."""
    channels = sd.unet_channels(model)
    if pipeline == PIX2PIX and channels != PIX2PIX_CHANNELS:
        raise ValueError(
            f"pipeline pix2pix needs an InstructPix2Pix model (a UNet with {PIX2PIX_CHANNELS} input "
            f"channels); {name} has {channels}"
        )
    if pipeline != PIX2PIX and channels == PIX2PIX_CHANNELS:
        raise ValueError(f"{name} is an InstructPix2Pix model: run it with pipeline pix2pix, not {pipeline}")


def pix2pix_guidance(generation: sd.Generation, image_guidance: float) -> bool:
    """Whether three-way guidance runs: diffusers' ``cfg > 1 and image_guidance_scale >= 1``."""
    return generation.guidance and image_guidance >= 1.0


def pix2pix(run: sd.Run, source: Image.Image, image_guidance: float) -> list[Image.Image]:
    """Edit ``source`` (a multiple of 8 pixels on each side) as the run's prompt instructs."""
    import torch

    model, generation = run.model, run.generation
    check_unet(model, generation.model, PIX2PIX)
    if image_guidance < 0:
        raise ValueError(f"the image guidance scale (strength) must be >= 0, got {image_guidance}")
    guided = pix2pix_guidance(generation, image_guidance)
    embeddings = instruction_embeddings(run, guided)
    # diffusers conditions on the encoder's latents as they are: no scaling factor.
    latents = sd.encode_image(model, sd.image_to_array(source), generation.vae_tiling)
    image_latents = np.repeat(latents / np.float32(model.scaling_factor), generation.batch, axis=0)
    if guided:
        image_latents = np.concatenate([image_latents, image_latents, np.zeros_like(image_latents)])

    scheduler = run.scheduler()
    unet = UNet(model.session("unet"))
    arguments = step_arguments(scheduler, eta=generation.eta, generator=sd.torch_generator(generation.seed))
    sample = torch.from_numpy(run.starting_latents(scheduler))
    timesteps = scheduler.timesteps
    done = 0
    for index, t in enumerate(timesteps):
        rows = torch.cat([sample] * 3) if guided else sample
        model_input = np.concatenate([scheduler.scale_model_input(rows, t).numpy(), image_latents], axis=1)
        noise = unet.noise(model_input, t, embeddings)
        if guided:
            text, image, uncond = np.split(noise, 3)
            noise = uncond + generation.cfg * (text - image) + image_guidance * (image - uncond)
        sample = scheduler.step(torch.from_numpy(noise), t, sample, **arguments, return_dict=False)[0]
        if sd.counts_as_step(index, len(timesteps), generation.steps, scheduler.order):
            done += 1
            sd.report_step(run.hooks, done, "sd", sample)
        run.hooks.check_cancelled()
    return run.decode(sample.numpy())


def instruction_embeddings(run: sd.Run, guided: bool) -> np.ndarray:
    """The prompt's embeddings, rows ``[prompt, negative, negative] * batch`` when ``guided``."""
    generation = run.generation
    prompt, negative = sd.parse_prompts(generation)
    if not guided:
        # cfg 1 encodes the prompt alone, whatever the cfg asked for (strength < 1 turns guidance off).
        return sd.encode_prompt(run.model, prompt.spans, None, replace(generation, cfg=1.0), prompt.clip_skip)
    pair = sd.encode_prompt(
        run.model, prompt.spans, negative.spans if negative else None, generation, prompt.clip_skip
    )
    uncond, text = np.split(pair, 2)
    return np.concatenate([text, uncond, uncond])

"""``blend-img2img``: img2img on every input image (or the stage's uploaded source).

Params: ``strength`` (required, 0-1) and the image params of ``source-txt2img``; ``width`` and
``height`` come from each input image (shrunk to multiples of 8 if needed). Each input is
replaced by ``batch`` results. An SDXL model (or ``pipeline: img2img-sdxl``) runs SDXL's UNet loop;
``pipeline: pix2pix`` runs InstructPix2Pix, ``strength`` its image guidance scale, over all ``steps``;
``pipeline: controlnet`` generates from noise conditioned on the input image by the ControlNet
``control`` names, ``strength`` its conditioning scale, over all ``steps`` (as onnx-web, loopback and
highres passes of a controlnet job condition on their input too); ``pipeline: panorama`` (or
``panorama-sdxl``) runs img2img by MultiDiffusion, in windows of ``unet_tile`` pixels ``unet_overlap``
of a window apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.diffusion import model as sd
from pipelines.diffusion.controlnet import CONTROLNET_PIPELINE, controlnet_txt2img, load_controlnet
from pipelines.diffusion.img2img import img2img, strength_steps
from pipelines.diffusion.lcm import lcm_run
from pipelines.diffusion.panorama import PANORAMA_PIPELINES, panorama_img2img, windowed
from pipelines.diffusion.pix2pix import PIX2PIX, check_unet, pix2pix
from pipelines.diffusion.prompt import prompt_stage
from pipelines.diffusion.sdxl import diffusion_run
from pipelines.stages.shared import TILING
from pipelines.stages.spec import StageType, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Run img2img on each image and return the results in input order."""
    prompt = prompt_stage(str(params["prompt"]), int(params["prompt_index"]))
    strength = float(params["strength"])
    recorded = {"pipeline": "img2img", **params}
    pipeline = str(recorded["pipeline"])
    generate, task = (pix2pix, PIX2PIX) if pipeline == PIX2PIX else (img2img, "img2img")
    if pipeline == CONTROLNET_PIPELINE:
        controlnet = load_controlnet(ctx.models_path, str(params.get("control") or ""), ctx.sessions)
        generate = partial(controlnet_txt2img, controlnet=controlnet)
    if pipeline in PANORAMA_PIPELINES:
        # The views of panorama txt2img: the UNet tile, unet_overlap apart.
        generate, task = windowed(panorama_img2img, params), "panorama"
    results = []
    for item in sd.stage_sources(ctx, params, images):
        source = sd.fit_to_latent_grid(item.image)
        # Sizes off the UNet's grid (outpaint borders, odd uploads) run padded, then are cropped back.
        padded = sd.pad_to_grid(source)
        generation = sd.Generation.from_params(
            params, prompt=prompt, width=padded.width, height=padded.height
        )
        model = sd.load_model(ctx.models_path, generation.model, ctx.sessions)
        check_unet(model, generation.model, pipeline)
        generated = [
            image.crop((0, 0, *source.size))
            for image in generate(
                lcm_run(diffusion_run(params, model, generation, ctx), task), padded, strength
            )
        ]
        metadata = sd.generation_metadata(
            recorded,
            generation,
            model,
            ctx.models_path,
            input_size=sd.input_size(item),
            size=source.size,
            extra_params={"strength": strength},
        )
        results += sd.derived_images(item, generated, metadata)
    return results


def _steps(params: Mapping[str, Any]) -> int:
    """Scheduler steps per input image: the ``strength`` fraction of ``steps``, at least one.

    pix2pix and controlnet always run every step: their ``strength`` guides, it does not shorten the
    schedule.
    """
    if params.get("pipeline") in (PIX2PIX, CONTROLNET_PIPELINE):
        return int(params["steps"])
    return strength_steps(int(params["steps"]), float(params["strength"]))


STAGE = StageType(
    "blend-img2img",
    run,
    (number("strength", 0, 1, 0.5), *TILING),
    groups=("image",),
    tileable=True,
    makes_batch=True,
    steps_per_image=True,
    steps=_steps,
)

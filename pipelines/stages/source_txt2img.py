"""``source-txt2img``: generate ``batch`` images from a prompt and append them to the input list.

Params (resolved by the api, contract §3.2 and §10.5): ``model``, ``scheduler``, ``prompt``,
``negative_prompt``, ``seed``, ``steps``, ``cfg``, ``eta``, ``batch``, ``width``, ``height`` and
``prompt_index`` (which ``||`` part of the prompt to use, default 0); the other image params
(``pipeline``, ``input_prompt``, ``tiled_vae``, ``unet_tile``, ...) are recorded in the metadata.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.lcm import lcm_run
from pipelines.diffusion.model import (
    DiffusionModel,
    Generation,
    Run,
    generation_metadata,
    grid_size,
    load_model,
)
from pipelines.diffusion.panorama import PANORAMA_PIPELINES, panorama, windowed
from pipelines.diffusion.prompt import prompt_stage
from pipelines.diffusion.sdxl import diffusion_run, txt2img_sdxl, wants_sdxl
from pipelines.diffusion.txt2img import txt2img
from pipelines.stages.spec import StageType, diffusion_steps, integer, size_from_params


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Generate the images at the requested size and return ``images`` followed by them."""
    requested, generation = generations(params)
    model = load_model(ctx.models_path, generation.model, ctx.sessions)
    # An SDXL run (by pipeline name or model folder) encodes and conditions as SDXL, panorama included;
    # an LCM-distilled UNet gets its embedded guidance scale.
    task = "panorama" if params["pipeline"] in PANORAMA_PIPELINES else "txt2img"
    run = lcm_run(diffusion_run(params, model, generation, ctx), task)
    generated = generator(params, model)(run)
    return [*images, *stage_images(params, requested, model, ctx.models_path, generated)]


def generator(params: Mapping[str, Any], model: DiffusionModel) -> Callable[[Run], list[Image.Image]]:
    """The pipeline the params ask for: panorama (SD's or SDXL's), SDXL by name (contract §8.6) or by
    model folder, txt2img."""
    if params["pipeline"] in PANORAMA_PIPELINES:
        # The view window is the UNet tile, the stride its unet_overlap's share less (as onnx-web's).
        return windowed(panorama, params)
    if wants_sdxl(params, model.folder):
        return txt2img_sdxl
    return txt2img


def generations(params: Mapping[str, Any]) -> tuple[Generation, Generation]:
    """What the params ask for, and what the stage generates: the size in whole UNet cells.

    Sizes in whole 64-px cells (every size onnx-web's GUI offers by default) run exactly as
    onnx-web; others generate on the next whole cell and are cropped, since exported UNets
    only take whole cells.
    """
    prompt = prompt_stage(str(params["prompt"]), int(params["prompt_index"]))
    requested = Generation.from_params(params, prompt=prompt)
    width, height = grid_size(requested.width, requested.height)
    return requested, Generation.from_params(params, prompt=prompt, width=width, height=height)


def stage_images(
    params: Mapping[str, Any],
    requested: Generation,
    model: DiffusionModel,
    models_path: Path,
    generated: list[Image.Image],
) -> list[StageImage]:
    """The generated images cropped to the requested size, each with its own copy of the metadata."""
    size = {"width": requested.width, "height": requested.height}
    metadata = generation_metadata(
        params, requested, model, models_path, input_size=size, size=(requested.width, requested.height)
    )
    return [
        StageImage(image.crop((0, 0, requested.width, requested.height)), copy.deepcopy(metadata))
        for image in generated
    ]


STAGE = StageType(
    "source-txt2img",
    run,
    (integer("prompt_index", 0, 16, 0),),
    groups=("image",),
    steps=diffusion_steps,
    size=size_from_params,
)

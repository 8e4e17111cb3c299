"""``source-txt2img``: generate ``batch`` images from a prompt and append them to the input list.

Params (resolved by the api, contract §3.2 and §10.5): ``model``, ``scheduler``, ``prompt``,
``negative_prompt``, ``seed``, ``steps``, ``cfg``, ``eta``, ``batch``, ``width``, ``height`` and
``prompt_index`` (which ``||`` part of the prompt to use, default 0); the other image params
(``pipeline``, ``input_prompt``, ``tiled_vae``, ``unet_tile``, ...) are recorded in the metadata.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipelines.diffusion import Generation, generation_metadata, grid_size, load_model
from pipelines.prompt import prompt_stage
from pipelines.stages.base import StageContext, StageImage
from pipelines.txt2img import txt2img


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Generate the images at the requested size and return ``images`` followed by them."""
    prompt = prompt_stage(str(params.get("prompt") or ""), int(params.get("prompt_index", 0)))
    requested = Generation.from_params(params, prompt=prompt)
    # Sizes in whole 64-px cells (every size onnx-web's GUI offers by default) run exactly as
    # onnx-web; others generate on the next whole cell and are cropped, since exported UNets
    # only take whole cells.
    width, height = grid_size(requested.width, requested.height)
    generation = Generation.from_params(params, prompt=prompt, width=width, height=height)
    model = load_model(ctx.models_path, generation.model, ctx.sessions)
    results = [
        image.crop((0, 0, requested.width, requested.height))
        for image in txt2img(model, generation, on_step=ctx.on_step, check_cancelled=ctx.check_cancelled)
    ]
    generation = requested
    size = {"width": generation.width, "height": generation.height}
    metadata = generation_metadata(
        params,
        generation,
        model,
        ctx.models_path,
        input_size=size,
        size=(generation.width, generation.height),
    )
    return [*images, *(StageImage(image, copy.deepcopy(metadata)) for image in results)]


def estimate(params: Mapping[str, Any]) -> int:
    """The steps this stage reports: one per scheduler step."""
    return int(params["steps"])

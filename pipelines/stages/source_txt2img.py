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

from pipelines.diffusion import Generation, generation_metadata, load_model
from pipelines.prompt import prompt_stage
from pipelines.stages.base import StageContext, StageImage
from pipelines.txt2img import txt2img


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Generate the images at the requested size and return ``images`` followed by them."""
    prompt = prompt_stage(str(params.get("prompt") or ""), int(params.get("prompt_index", 0)))
    generation = Generation.from_params(params, prompt=prompt)
    model = load_model(ctx.models_path, generation.model, ctx.sessions)
    results = txt2img(model, generation, on_step=ctx.on_step, check_cancelled=ctx.check_cancelled)
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

"""``upscale-outpaint`` (also ``blend-inpaint``): inpaint every input image with the stage's mask.

Params: the image params of ``source-txt2img`` (``width``/``height`` come from each image) and
``fill_color``, which only the tiling executor uses to pad edge tiles. The mask is the stage's
``mask:<name>`` upload: white is repainted, black kept. An image whose mask is all black is
passed on untouched, as onnx-web skips such tiles.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from PIL import Image

from pipelines.diffusion import (
    Generation,
    fit_to_latent_grid,
    generation_metadata,
    load_model,
    pad_to_grid,
    stage_sources,
)
from pipelines.inpaint import inpaint, mask_to_array
from pipelines.prompt import prompt_stage
from pipelines.stages.base import StageContext, StageImage


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Inpaint each image where the stage mask is white; returns ``batch`` results per image."""
    mask = ctx.inputs.get(f"mask:{params.get('stage_name', '')}")
    if mask is None:
        raise ValueError("inpainting needs a mask: upload one as mask:<stage name>")
    prompt = prompt_stage(str(params.get("prompt") or ""), int(params.get("prompt_index", 0)))
    recorded = {"pipeline": "inpaint", **params}
    results = []
    for item in stage_sources(ctx, params, images):
        source = fit_to_latent_grid(item.image)
        if not mask_to_array(mask, source.size).any():
            results.append(item)
            continue
        # Sizes off the UNet's grid run padded (the padding masked black: kept), then cropped back.
        padded = pad_to_grid(source)
        padded_mask = pad_to_grid(
            mask.convert("L").resize(source.size, Image.Resampling.BILINEAR), fill="black"
        )
        generation = Generation.from_params(params, prompt=prompt, width=padded.width, height=padded.height)
        model = load_model(ctx.models_path, generation.model, ctx.sessions)
        generated = [
            image.crop((0, 0, *source.size))
            for image in inpaint(
                model,
                generation,
                padded,
                padded_mask,
                on_step=ctx.on_step,
                check_cancelled=ctx.check_cancelled,
            )
        ]
        metadata = generation_metadata(
            recorded,
            generation,
            model,
            ctx.models_path,
            input_size=item.metadata.get(
                "input_size", {"width": item.image.width, "height": item.image.height}
            ),
            size=source.size,
        )
        # The VAE round trip shifts every pixel a little; users expect what the mask keeps (black)
        # to stay exactly as it was, so the original is composited back through the mask.
        keep = mask.convert("L").resize(source.size, Image.Resampling.BILINEAR)
        results += [
            StageImage(Image.composite(image.convert("RGB"), source.convert("RGB"), keep),
                       {**item.metadata, **copy.deepcopy(metadata)})
            for image in generated
        ]  # fmt: skip
    return results


def estimate(params: Mapping[str, Any]) -> int:
    """Scheduler steps per input image: inpainting always runs the whole schedule."""
    return int(params["steps"])

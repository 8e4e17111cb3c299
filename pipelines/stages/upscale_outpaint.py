"""``upscale-outpaint`` (also ``blend-inpaint``): inpaint every input image with the stage's mask.

Params: the image params of ``source-txt2img`` (``width``/``height`` come from each image),
``fill_color`` (which only the tiling executor uses to pad edge tiles), and ``fullres`` with
``fullres_padding``: inpaint a small masked area alone, at one full UNet tile (``unet_tile``).
The mask is the stage's ``mask:<name>`` upload: white is repainted, black kept. An image whose
mask is all black is passed on untouched, as onnx-web skips such tiles. An SDXL model runs SDXL's
UNet loop; ``pipeline: panorama`` (or ``panorama-sdxl``) paints by MultiDiffusion, in windows of
``unet_tile`` pixels ``unet_overlap`` of a window apart, so an outpainted panorama is painted whole
where a plain inpaint would run the UNet once over all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion import model as sd
from pipelines.diffusion.inpaint import inpaint, mask_to_array
from pipelines.diffusion.panorama import PANORAMA_PIPELINES, panorama_inpaint, windowed
from pipelines.diffusion.prompt import prompt_stage
from pipelines.diffusion.sdxl import diffusion_run
from pipelines.stages.shared import TILING
from pipelines.stages.spec import Param, StageType, color, diffusion_steps, number


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Inpaint each image where the stage mask is white; returns ``batch`` results per image."""
    mask = ctx.inputs.get(f"mask:{params.get('stage_name', '')}")
    if mask is None:
        raise ValueError("inpainting needs a mask: upload one as mask:<stage name>")
    prompt = prompt_stage(str(params["prompt"]), int(params["prompt_index"]))
    recorded = {"pipeline": "inpaint", **params}
    results = []
    for item in sd.stage_sources(ctx, params, images):
        source = sd.fit_to_latent_grid(item.image)
        fitted = mask.convert("L").resize(source.size, Image.Resampling.BILINEAR)
        if not mask_to_array(fitted, source.size).any():
            results.append(item)
            continue
        generation = sd.Generation.from_params(
            params, prompt=prompt, width=source.width, height=source.height
        )
        model = sd.load_model(ctx.models_path, generation.model, ctx.sessions)
        region = fullres_region(fitted, params) if params["fullres"] else None
        if region is None:
            generated = _inpaint(ctx, params, model, generation, source, fitted)
        else:
            generated = _inpaint_region(
                ctx, params, model, generation, source, fitted, region, int(params["unet_tile"])
            )
        metadata = sd.generation_metadata(
            recorded, generation, model, ctx.models_path, input_size=sd.input_size(item), size=source.size
        )
        results += sd.derived_images(item, generated, metadata)
    return results


def _inpaint(
    ctx: StageContext,
    params: Mapping[str, Any],
    model: Any,
    generation: sd.Generation,
    source: Image.Image,
    mask: Image.Image,
) -> list[Image.Image]:
    """Inpaint ``source`` whole; what the mask keeps (black) comes back exactly as it was."""
    # Sizes off the UNet's grid run padded (the padding masked black: kept), then cropped back.
    padded = sd.pad_to_grid(source)
    padded_mask = sd.pad_to_grid(mask, fill="black")
    run_at = dataclasses.replace(generation, width=padded.width, height=padded.height)
    paint: Any = inpaint
    if params.get("pipeline") in PANORAMA_PIPELINES:
        # The views of panorama txt2img and img2img: the UNet tile, unet_overlap apart.
        paint = windowed(panorama_inpaint, params)
    generated = paint(diffusion_run(params, model, run_at, ctx), padded, padded_mask)
    # The VAE round trip shifts every pixel a little; users expect what the mask keeps to stay
    # exactly as it was, so the original is composited back through the mask.
    return [
        Image.composite(image.crop((0, 0, *source.size)).convert("RGB"), source.convert("RGB"), mask)
        for image in generated
    ]


def fullres_region(mask: Image.Image, params: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """The square around the mask, grown by ``fullres_padding``, if it fits one UNet tile.

    Contract §8.3 step 2: a small masked area is inpainted at the model's full resolution
    instead of at its share of a large image; a mask too large for one tile is inpainted whole.
    """
    box = mask.getbbox()
    if box is None:
        return None
    padding = float(params["fullres_padding"])
    side = int(max(box[2] - box[0], box[3] - box[1]) * padding)
    side = min(side, mask.width, mask.height)
    if side > int(params["unet_tile"]) or side >= max(mask.size):
        return None
    centre_x, centre_y = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    left = min(max(centre_x - side // 2, 0), mask.width - side)
    top = min(max(centre_y - side // 2, 0), mask.height - side)
    return (left, top, left + side, top + side)


def _inpaint_region(
    ctx: StageContext,
    params: Mapping[str, Any],
    model: Any,
    generation: sd.Generation,
    source: Image.Image,
    mask: Image.Image,
    region: tuple[int, int, int, int],
    tile: int,
) -> list[Image.Image]:
    """Inpaint only ``region``, enlarged to one full tile, and paste it back into ``source``."""
    size = (region[2] - region[0], region[3] - region[1])
    crop = source.crop(region).resize((tile, tile), Image.Resampling.LANCZOS)
    crop_mask = mask.crop(region).resize((tile, tile), Image.Resampling.BILINEAR)
    results = []
    for painted in _inpaint(ctx, params, model, generation, crop, crop_mask):
        canvas = source.convert("RGB").copy()
        small = painted.resize(size, Image.Resampling.LANCZOS)
        canvas.paste(Image.composite(small, canvas.crop(region), mask.crop(region)), region[:2])
        results.append(canvas)
    return results


_PARAMS = (
    color("fill_color", "white"),
    *TILING,
    # Full-res inpainting (contract §8.3); the legacy inpaint route sets them from the request.
    Param("fullres", "bool", default=False),
    number("fullres_padding", 1, 2, 1.2),
)
STAGE = StageType(
    "upscale-outpaint",
    run,
    _PARAMS,
    ("image",),
    tileable=True,
    makes_batch=True,
    steps_per_image=True,
    needs=("mask",),
    steps=diffusion_steps,
)
#: onnx-web's inpainting stage: the same runner.
BLEND_INPAINT = dataclasses.replace(STAGE, name="blend-inpaint")

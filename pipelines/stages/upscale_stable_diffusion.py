"""``upscale-stable-diffusion``: enlarge every image with the SD x4 upscaler, to ``outscale`` times its size.

Params (contract §10.5; the image and upscale groups): ``upscale_model``, the upscaler's folder name;
``prompt`` (its ``prompt_index`` part, default 0), ``negative_prompt``, ``steps``, ``cfg``,
``eta``, ``seed`` and ``scheduler`` as for txt2img; ``denoise``, the noise level (see
:func:`pipelines.diffusion.upscale_sd.noise_level`: up to 1 a strength, levels 0 to 40; above 1 the
level itself); ``tiled_vae``, ``vae_tile``, ``vae_overlap``.

Each input becomes one image (``batch`` does not multiply upscales, as in onnx-web) ``outscale``
times its size, as the model upscalers make theirs: the model enlarges 4 times, and any other
``outscale`` is finished from its result with Lanczos (onnx-web's stage ignores ``outscale`` and
so breaks the tiles of any other). The chain executor cuts inputs larger than the stage's tile into
tiles: onnx-web feeds this model 128-pixel tiles (``tiles: "mini"``, with ``outscale: 4``), and 128
is the stage's largest tile here, as its UNet runs at the input's own size.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.model import Generation, Run, grid_size, load_model, stage_sources
from pipelines.diffusion.prompt import prompt_stage
from pipelines.diffusion.upscale_sd import UPSCALER_GRID, max_noise_level, noise_level, upscale_sd
from pipelines.imageops.upscale import scaled_size, upscaling_model_name, with_image
from pipelines.stages.shared import TILING
from pipelines.stages.spec import StageType, diffusion_steps


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Upscale each image (or the stage's uploaded source) and return the results in order."""
    prompt = prompt_stage(str(params["prompt"]), int(params["prompt_index"]))
    name = upscaling_model_name(params)
    model = load_model(ctx.models_path, name, ctx.sessions)
    level = noise_level(float(params["denoise"]), max_noise_level(model.folder))
    results = []
    for item in stage_sources(ctx, params, images):
        width, height = grid_size(*item.image.size, UPSCALER_GRID)
        generation = Generation.from_params(
            params, model=name, prompt=prompt, batch=1, width=width, height=height
        )
        (image,) = upscale_sd(Run(model, generation, ctx), item.image, level)
        target = scaled_size(item.image.size, float(params["outscale"]))
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS)
        others = [entry for entry in item.metadata.get("models", []) if entry.get("name") != name]
        models = [*others, {"name": name, "hash": model.hash, "weight": 1.0}]
        results.append(with_image(item, image, models=models))
    return results


STAGE = StageType(
    "upscale-stable-diffusion",
    run,
    TILING,
    groups=("image", "upscale"),
    max_tile=128,
    tileable=True,
    steps_per_image=True,
    model="upscaling",
    steps=diffusion_steps,
)

"""Every stage type of onnx-web's chain language (contract §10.5): one module each, listed here.

A new stage type is one module declaring ``STAGE = StageType(...)`` (``pipelines.stages.spec``)
next to its ``run``, plus one line below. The api imports this registry to check chains, so stage
modules import nothing heavy at module level (ONNX Runtime, torch and OpenCV load when they run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.stages import (
    blend_denoise,
    blend_denoise_localstd,
    blend_grid,
    blend_img2img,
    blend_linear,
    blend_mask,
    correct_codeformer,
    correct_gfpgan,
    edit_expand,
    edit_filter,
    edit_metadata,
    edit_safety,
    edit_text,
    persist,
    reduce_crop,
    reduce_thumbnail,
    source_noise,
    source_s3,
    source_txt2img,
    source_url,
    text_generate,
    text_prompt,
    upscale_bsrgan,
    upscale_outpaint,
    upscale_resrgan,
    upscale_simple,
    upscale_stable_diffusion,
    upscale_swinir,
)
from pipelines.stages.spec import StageType

STAGES: Mapping[str, StageType] = {
    stage.name: stage
    for stage in (
        source_txt2img.STAGE,
        source_noise.STAGE,
        source_url.STAGE,
        source_s3.STAGE,
        blend_img2img.STAGE,
        upscale_outpaint.BLEND_INPAINT,
        blend_denoise.STAGE,
        blend_denoise.FASTNLMEANS,
        blend_denoise_localstd.STAGE,
        blend_grid.STAGE,
        blend_linear.STAGE,
        blend_mask.STAGE,
        correct_codeformer.STAGE,
        correct_gfpgan.STAGE,
        edit_expand.STAGE,
        edit_filter.STAGE,
        edit_metadata.STAGE,
        edit_safety.STAGE,
        edit_text.STAGE,
        persist.DISK,
        persist.S3,
        reduce_crop.STAGE,
        reduce_thumbnail.STAGE,
        text_generate.STAGE,
        text_prompt.STAGE,
        upscale_bsrgan.STAGE,
        upscale_outpaint.STAGE,
        upscale_resrgan.STAGE,
        upscale_simple.STAGE,
        upscale_stable_diffusion.STAGE,
        upscale_swinir.STAGE,
    )
}
#: The chain language's compound stage: the api compiles it into its resize and img2img passes.
COMPOUND = frozenset({"upscale-highres"})
#: Stage types of onnx-web this build does not run yet: a chain naming one is answered 501.
PLANNED: frozenset[str] = frozenset()
#: Stage types only the api's own routes build (txt2txt's ``text-generate``): not part of onnx-web's
#: chain language, so a chain document may not name them and the catalogue does not list them.
ROUTE_ONLY = frozenset({"text-generate"})
#: Stage types that make images from nothing (or from text).
SOURCES = frozenset(name for name in STAGES if name.startswith("source-"))
#: Stage types that take no images: they work on the prompt, or make text.
TEXT_ONLY = frozenset(name for name in STAGES if name.startswith("text-"))
#: Stage types that start from their own ``source:<stage>`` upload when no earlier stage hands
#: them images (``pipelines.diffusion.model.stage_sources``). Any other stage given no images
#: makes none, so a chain reaching it without images is refused at submit.
FROM_UPLOAD = frozenset(
    {
        "blend-img2img",
        "blend-inpaint",
        "correct-codeformer",
        "correct-gfpgan",
        "reduce-crop",
        "reduce-thumbnail",
        "upscale-outpaint",
        "upscale-stable-diffusion",
    }
)
#: Every stage type name a chain document may use.
NAMES = (frozenset(STAGES) - ROUTE_ONLY) | COMPOUND | PLANNED


def effective_tile(stage_type: str, requested: int) -> int:
    """The tile a stage really uses: its own cap and the request's, whichever is smaller."""
    return min(STAGES[stage_type].max_tile, requested)


def estimate_steps(stages: list[Mapping[str, object]]) -> int:
    """The ``steps.total`` of a resolved chain: each stage's estimate, once per image it runs on
    where it reports per image (``StageType.steps_per_image``), else once.

    The images are followed through the chain: a chain that starts with a stage reading an upload
    starts from one image, one that starts with ``source-txt2img`` from none; ``source-txt2img``
    adds ``batch`` images, a stage that ``makes_batch`` turns each into ``batch``, ``blend-grid``
    makes one of them all, and every other stage hands on one image per image.
    """
    total = 0
    images = 0 if stages and stages[0]["type"] in SOURCES else 1
    for stage in stages:
        params = stage["params"]
        assert isinstance(params, Mapping)
        stage_type = STAGES[str(stage["type"])]
        total += stage_type.estimate(params) * (max(images, 1) if stage_type.steps_per_image else 1)
        batch = int(params.get("batch", 1))
        if stage_type.name == "source-txt2img":
            images += batch
        elif stage_type.name in SOURCES:
            images += 1
        elif stage_type.makes_batch:
            images *= batch
        elif stage_type.name == "blend-grid":
            images = 1
    return total


def stage_catalogue() -> dict[str, Any]:
    """Every stage type as data, for ``GET /api/settings/stages``: parameters (JSON schema),
    groups, limits."""
    catalogue: dict[str, Any] = {
        name: {
            "params": stage.schema(),
            "groups": list(stage.groups),
            "needs": list(stage.needs),
            "model": stage.model,
            "max_tile": stage.max_tile,
            "tileable": stage.tileable,
            "available": True,
        }
        for name, stage in sorted(STAGES.items())
        if name not in ROUTE_ONLY
    }
    for name in sorted(COMPOUND | PLANNED):
        catalogue[name] = {"available": name in COMPOUND}
    return catalogue

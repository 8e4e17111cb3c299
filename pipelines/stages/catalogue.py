"""Every stage type of onnx-web's chain language (contract §10.5), as data.

The api imports this module to validate chain documents and to estimate progress totals before
a job runs, so it imports no stage implementation: each entry names the module that implements
it, and the worker imports that module only when a chain uses it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipelines.context import StageRunner

#: onnx-web's named tile sizes (contract §10.4).
TILE_NAMES: Mapping[str, int] = {
    "micro": 64,
    "mini": 128,
    "half": 256,
    "auto": 512,
    "hd1k": 1024,
    "hd2k": 2048,
    "hd4k": 4096,
    "hd8k": 8192,
    "hd16k": 16384,
    "hd32k": 32768,
    "hd64k": 65536,
    "max": 2**32,
}
MAX_TILE = 2**32
DEFAULT_TILE = 512


def _one(params: Mapping[str, Any]) -> int:
    return 1


def _steps(params: Mapping[str, Any]) -> int:
    return int(params.get("steps", 25))


def _strength_steps(params: Mapping[str, Any]) -> int:
    """img2img runs only the last ``strength`` fraction of the schedule."""
    steps = int(params.get("steps", 25))
    strength = float(params.get("strength", 0.5))
    return max(1, min(steps, int(steps * strength)))


@dataclass(frozen=True)
class StageType:
    """One stage type: its limits, its cost estimate and where it is implemented."""

    name: str
    #: The largest tile this stage processes at once, in pixels.
    max_tile: int
    #: ``pipelines.stages.<module>`` implements ``run`` (and usually ``estimate``).
    module: str
    #: Steps this stage adds to the job's ``steps.total``, from its resolved params.
    estimate: Callable[[Mapping[str, Any]], int] = _one
    #: Image inputs the stage reads from the request (``source``, ``mask``).
    needs: tuple[str, ...] = ()
    #: Whether the executor splits large inputs into tiles for it (stages that tile internally,
    #: like the model upscalers, or that need the whole image, like face correction, do not).
    tileable: bool = False

    @property
    def available(self) -> bool:
        """Whether this build implements the stage (its module exists)."""
        return _module_exists(self.module)

    def runner(self) -> StageRunner:
        """Import the implementing module and return its ``run`` (worker only)."""
        module = importlib.import_module(f"pipelines.stages.{self.module}")
        runner: StageRunner = module.run
        return runner


@cache
def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(f"pipelines.stages.{module}") is not None


def _types(*entries: StageType) -> dict[str, StageType]:
    return {entry.name: entry for entry in entries}


STAGES: Mapping[str, StageType] = _types(
    StageType("source-txt2img", MAX_TILE, "source_txt2img", _steps),
    StageType("source-noise", 512, "source_noise"),
    StageType("source-url", 512, "source_url"),
    StageType("source-s3", 512, "source_s3"),
    StageType("blend-img2img", MAX_TILE, "blend_img2img", _strength_steps, tileable=True),
    StageType("blend-inpaint", MAX_TILE, "upscale_outpaint", _steps, ("mask",), tileable=True),
    StageType("blend-denoise", MAX_TILE, "blend_denoise"),
    StageType("blend-denoise-fastnlmeans", MAX_TILE, "blend_denoise"),
    StageType("blend-denoise-localstd", MAX_TILE, "blend_denoise_localstd"),
    StageType("blend-grid", MAX_TILE, "blend_grid"),
    StageType("blend-linear", 512, "blend_linear", needs=("source",)),
    StageType("blend-mask", 512, "blend_mask", needs=("source", "mask")),
    StageType("correct-codeformer", 512, "correct_codeformer"),
    StageType("correct-gfpgan", 512, "correct_gfpgan"),
    StageType("edit-expand", MAX_TILE, "edit_expand"),
    StageType("edit-filter", MAX_TILE, "edit_filter"),
    StageType("edit-metadata", MAX_TILE, "edit_metadata"),
    StageType("edit-safety", MAX_TILE, "edit_safety"),
    StageType("edit-text", MAX_TILE, "edit_text"),
    StageType("persist-disk", MAX_TILE, "persist"),
    StageType("persist-s3", MAX_TILE, "persist"),
    StageType("reduce-crop", 512, "reduce_crop"),
    StageType("reduce-thumbnail", 512, "reduce_thumbnail"),
    StageType("text-prompt", MAX_TILE, "text_prompt"),
    StageType("upscale-bsrgan", 64, "upscale_bsrgan"),
    StageType("upscale-highres", 512, "upscale_highres", _steps),
    StageType("upscale-outpaint", MAX_TILE, "upscale_outpaint", _steps, ("mask",), tileable=True),
    StageType("upscale-resrgan", 512, "upscale_resrgan"),
    StageType("upscale-simple", MAX_TILE, "upscale_simple"),
    # 128-px inputs (512-px outputs), as onnx-web runs the x4 upscaler.
    StageType("upscale-stable-diffusion", 128, "upscale_stable_diffusion", _steps, tileable=True),
    StageType("upscale-swinir", 64, "upscale_swinir"),
)


def parse_tiles(value: object) -> int:
    """Read a stage's ``tiles`` option: missing → 512, an int, a numeric string or a size name."""
    if value is None:
        return DEFAULT_TILE
    if isinstance(value, bool):
        raise ValueError("must be a tile size in pixels or one of " + ", ".join(TILE_NAMES))
    if isinstance(value, int):
        tile = value
    elif isinstance(value, float) and value.is_integer():
        tile = int(value)
    elif isinstance(value, str) and value in TILE_NAMES:
        tile = TILE_NAMES[value]
    elif isinstance(value, str) and value.strip().isdigit():
        tile = int(value)
    else:
        raise ValueError("must be a tile size in pixels or one of " + ", ".join(TILE_NAMES))
    if tile < 64:
        raise ValueError(f"must be at least 64 pixels, got {tile}")
    return tile


def effective_tile(stage_type: str, requested: int) -> int:
    """The tile a stage really uses: its own cap and the request's, whichever is smaller."""
    return min(STAGES[stage_type].max_tile, requested)


def estimate_steps(stages: list[Mapping[str, Any]]) -> int:
    """The ``steps.total`` of a resolved chain: the sum of each stage's estimate."""
    return sum(STAGES[stage["type"]].estimate(stage["params"]) for stage in stages)

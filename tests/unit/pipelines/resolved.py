"""What the api resolves into every stage that reads the shared groups: ``params.json``'s defaults.

Stage tests start from these and change what they test, as a stored chain carries every value
(the worker defaults nothing).
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType

IMAGE: dict[str, Any] = {
    "model": "stable-diffusion-onnx-v1-5",
    "pipeline": "txt2img",
    "scheduler": "ddim",
    "prompt": "",
    "negative_prompt": None,
    "cfg": 6.0,
    "seed": 42,
    "steps": 4,
    "eta": 0.0,
    "batch": 1,
    "control": "",
    "input_prompt": "",
    "input_negative_prompt": None,
    "loopback": 0,
    "tiled_vae": False,
    "unet_overlap": 0.25,
    "unet_tile": 512,
    "vae_overlap": 0.25,
    "vae_tile": 512,
    "denoise": 3,
    "thumbnail": True,
    "width": 512,
    "height": 512,
}
UPSCALE: dict[str, Any] = {
    "upscale_model": None,
    "correction_model": None,
    "denoise": 0.5,
    "upscale": False,
    "faces": False,
    "face_outscale": 1,
    "face_strength": 0.5,
    "outscale": 1,
    "scale": 1,
    "upscale_order": "correction-first",
    "pre_pad": 0,
    "tile_pad": 10,
}
#: Both groups, as the chain language stores them in every stage.
RESOLVED: dict[str, Any] = {**IMAGE, **UPSCALE}


def run_stage(
    stage: StageType, ctx: StageContext, raw: dict[str, Any], images: list[StageImage]
) -> list[StageImage]:
    """Run ``stage`` as a job would: its declared defaults applied (the api), then checked (the worker)."""
    return stage.run(ctx, stage.load({**raw, **stage.resolve(raw)}), images)

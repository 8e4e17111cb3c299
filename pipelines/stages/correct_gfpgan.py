"""``correct-gfpgan``: restore the faces of every image with a GFPGAN ONNX model.

Params (the upscale group, resolved by the api): ``correction_model`` names the model,
``<models>/<name>.onnx``; without one, faces are left alone (onnx-web skips the stage) but
``face_outscale`` still applies. ``face_strength`` is how much of each restored face is blended
in (GFPGAN has no fidelity input); ``face_outscale``: see :mod:`pipelines.imageops.correct`.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType, face_outscaled


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Correct the faces of each image with the model named by ``correction``."""
    # OpenCV is a worker dependency; the api imports this module only for its declaration.
    from pipelines.imageops.correct import run_correction_stage

    return run_correction_stage(ctx, params, images, default_model=None, strength_is_visibility=True)


STAGE = StageType(
    "correct-gfpgan", run, groups=("upscale",), max_tile=512, model="correction", size=face_outscaled
)

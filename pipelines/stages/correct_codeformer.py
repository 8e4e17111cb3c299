"""``correct-codeformer``: restore the faces of every image with a CodeFormer ONNX model.

Params (the upscale group, resolved by the api): ``correction_model`` names the model, else
``correction-codeformer`` (onnx-web always loaded its one CodeFormer checkpoint);
``face_strength`` is CodeFormer's fidelity weight (its faces are pasted back whole, as onnx-web
does); ``face_outscale``: see :mod:`pipelines.imageops.correct`.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType, face_outscaled

#: The model this stage loads when the params name none.
DEFAULT_MODEL = "correction-codeformer"


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Correct the faces of each image with CodeFormer."""
    # OpenCV is a worker dependency; the api imports this module only for its declaration.
    from pipelines.imageops.correct import run_correction_stage

    return run_correction_stage(
        ctx, params, images, default_model=DEFAULT_MODEL, strength_is_visibility=False
    )


STAGE = StageType(
    "correct-codeformer",
    run,
    groups=("upscale",),
    max_tile=512,
    model="correction",
    default_model=DEFAULT_MODEL,
    size=face_outscaled,
)

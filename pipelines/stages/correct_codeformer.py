"""``correct-codeformer``: restore the faces of every image with a CodeFormer ONNX model.

Params: ``correction`` (or ``correction_model``) names the model, default
``correction-codeformer`` (onnx-web always loaded its one CodeFormer checkpoint);
``faceStrength`` (``face_strength``, 0-1, default 0.5) is CodeFormer's fidelity weight and the
paste-back strength; ``faceOutscale`` (``face_outscale``, 1-4, default 1): see
:mod:`pipelines.imageops.correct`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.correct import run_correction_stage

#: The model this stage loads when the params name none.
DEFAULT_MODEL = "correction-codeformer"


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Correct the faces of each image with CodeFormer."""
    return run_correction_stage(ctx, params, images, default_model=DEFAULT_MODEL)


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

"""``correct-gfpgan``: restore the faces of every image with a GFPGAN ONNX model.

Params: ``correction`` (or ``correction_model``) names the model, ``<models>/<name>.onnx``;
without one, faces are left alone (onnx-web skips the stage) but ``faceOutscale`` still applies.
``faceStrength`` (``face_strength``, 0-1, default 0.5) and ``faceOutscale`` (``face_outscale``,
1-4, default 1): see :mod:`pipelines.imageops.correct`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.imageops.correct import run_correction_stage


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Correct the faces of each image with the model named by ``correction``."""
    return run_correction_stage(ctx, params, images, default_model=None)


def estimate(params: Mapping[str, Any]) -> int:
    """One step."""
    return 1

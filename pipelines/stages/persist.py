"""``persist-disk`` and ``persist-s3``: mark the current images as outputs of the job.

Stages never write storage themselves: the worker uploads whatever the chain persisted to the
object store (both stage types persist there), so the pipeline stays free of I/O.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Record ``images`` as outputs and hand them on unchanged."""
    ctx.persist(images)
    return images


DISK = StageType("persist-disk", run)
#: Both persist stages store the images as the job's outputs in the object store.
S3 = StageType("persist-s3", run)

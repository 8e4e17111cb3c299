"""``source-s3``: append the images stored at ``source_keys`` in ``bucket`` to the input images.

Params: ``bucket`` and ``source_keys`` (both required; the keys one comma-separated string,
since chain params are scalars). The stage never reads storage: the worker fetches each object
before the chain runs (:func:`pipelines.prefetch.s3_inputs` lists them) and passes the images in
as ``s3:<stage>:<i>``; which buckets and keys a job may read is the worker's decision.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.prefetch import prefetched_images
from pipelines.stages.spec import StageType, text


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Return ``images`` followed by one image per key, in the order the keys are listed."""
    fetched = prefetched_images(ctx, params, "s3", "source_keys")
    ctx.on_step(1)
    return [*images, *fetched]


STAGE = StageType(
    "source-s3",
    run,
    (text("source_keys", 8000, required=True), text("bucket", 63, required=True)),
    max_tile=512,
)

"""``source-url``: append the images at ``source_urls`` to the input images.

Params: ``source_urls`` (required), one comma-separated string of http(s) URLs, since chain
params are scalars (onnx-web took an array the schema could never carry). The stage itself
never touches the network: the worker fetches each URL behind the SSRF controls of
:mod:`service.fetch` before the chain runs and passes the images in as ``url:<stage>:<i>``.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.prefetch import prefetched_images
from pipelines.stages.spec import StageType, text


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Return ``images`` followed by one image per URL, in the order the URLs are listed."""
    fetched = prefetched_images(ctx, params, "url", "source_urls")
    ctx.on_step(1)
    return [*images, *fetched]


STAGE = StageType("source-url", run, (text("source_urls", 8000, required=True),), max_tile=512)

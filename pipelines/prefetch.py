"""The images a chain's ``source-url`` and ``source-s3`` stages read, fetched before it runs.

The stages stay pure: the worker lists what a chain needs (:func:`url_inputs`, :func:`s3_inputs`),
fetches it (``service.fetch`` for URLs, the object store for keys) and hands the decoded images to
the chain as inputs keyed ``url:<stage>:<i>`` / ``s3:<stage>:<i>``; the stages read them back with
:func:`prefetched_images`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage


def split_sources(value: object, field: str) -> list[str]:
    """The entries of a comma-separated stage param (``source_urls``, ``source_keys``).

    Chain params are scalars only (contract §10.1), so lists travel as one string; a comma
    inside a URL must be percent-encoded (``%2C``).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a comma-separated string of at least one entry")
    entries = [entry.strip() for entry in value.split(",")]
    if "" in entries:
        raise ValueError(f"{field} has an empty entry (entry {entries.index('') + 1})")
    return entries


def input_key(kind: str, stage_name: str, index: int) -> str:
    """The chain input key of a prefetched image: ``url:<stage>:<i>`` or ``s3:<stage>:<i>``."""
    return f"{kind}:{stage_name}:{index}"


def url_inputs(chain: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(input key, URL)`` for every URL the chain's ``source-url`` stages read, in order."""
    return [
        (input_key("url", stage["name"], index), url)
        for stage in chain["stages"]
        if stage["type"] == "source-url"
        for index, url in enumerate(split_sources(stage["params"].get("source_urls"), "source_urls"))
    ]


def s3_inputs(chain: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(input key, bucket, object key)`` for every object the chain's ``source-s3`` stages read."""
    found = []
    for stage in chain["stages"]:
        if stage["type"] != "source-s3":
            continue
        bucket = stage["params"].get("bucket")
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"stage {stage['name']!r}: source-s3 needs a 'bucket'")
        keys = split_sources(stage["params"].get("source_keys"), "source_keys")
        found += [(input_key("s3", stage["name"], index), bucket, key) for index, key in enumerate(keys)]
    return found


def prefetched_images(
    ctx: StageContext, params: Mapping[str, Any], kind: str, field: str
) -> list[StageImage]:
    """The images the worker fetched for a ``source-url``/``source-s3`` stage, in ``field``'s order.

    A missing one means the worker did not prefetch this stage: a bug, not bad input, so the
    message names the key rather than blaming the request.
    """
    stage_name = str(params.get("stage_name", ""))
    images = []
    for index, _ in enumerate(split_sources(params.get(field), field)):
        key = input_key(kind, stage_name, index)
        if key not in ctx.inputs:
            raise KeyError(f"the worker did not prefetch {key!r} before the chain ran")
        image = ctx.inputs[key].convert("RGB")
        images.append(StageImage(image, {"size": {"width": image.width, "height": image.height}}))
    return images

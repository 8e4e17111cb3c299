"""``edit-metadata``: add a note to every image's metadata, and the legacy routes' groups.

Params: ``note`` (a string, stored as the metadata's ``note``); ``highres`` and ``upscale``,
when they are objects (as the legacy route builder passes them), merged into the metadata's
groups of those names (contract §7.3). Chain documents carry only scalars, and the GUI spreads
the boolean ``upscale``/``highres`` switches into every stage, so scalar values of those two
are not groups and are left alone. Images pass through unchanged; only their metadata is new.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType, text

#: Params that, as objects, are merged into the metadata group of the same name.
GROUPS = ("highres", "upscale")


def edited_metadata(metadata: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` with the stage's note and groups applied."""
    edited = copy.deepcopy(dict(metadata))
    if params.get("note") is not None:
        edited["note"] = str(params["note"])
    for group in GROUPS:
        given = params.get(group)
        if isinstance(given, Mapping):
            edited[group] = {**edited.get(group, {}), **copy.deepcopy(dict(given))}
    return edited


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """The same images with edited copies of their metadata (earlier lists keep theirs)."""
    edited = [StageImage(item.image, edited_metadata(item.metadata, params)) for item in images]
    ctx.on_step(1)
    return edited


STAGE = StageType("edit-metadata", run, (text("note", 1000),))

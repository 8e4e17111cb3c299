"""Output names and the object keys a succeeded job recorded for them.

Both ``GET /output/<name>`` and the ``source-s3`` stage's prefetch resolve names here, so a name
is never turned into a storage key by string building: only keys recorded in a succeeded row
are ever read.
"""

from __future__ import annotations

import re

from service.jobs.store import JobState, JobStore

#: ``<mode>_<seed>_<sha256>_<unix seconds>_[thumbnail_]<index>.<ext>[.json]``
OUTPUT_NAME = re.compile(
    r"^(?P<job>[a-z0-9]+_\d{1,10}_[0-9a-f]{64}_\d{1,12})_(?:thumbnail_)?\d{1,4}\.(?:png|jpeg|webp)(?:\.json)?$"
)


def recorded_key(jobs: JobStore, filename: str) -> str | None:
    """The object key of ``filename`` if it names an output of a succeeded job, else None."""
    match = OUTPUT_NAME.match(filename)
    if match is None:
        return None
    view = jobs.get_many([match["job"]]).get(match["job"])
    if view is None or view.state != JobState.SUCCESS or not view.output_keys:
        return None
    return view.output_keys.get(filename)

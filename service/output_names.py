"""Output file names: what the worker calls the files it writes, and the key each name leads to.

Both ``GET /output/<name>`` and the ``source-s3`` stage's prefetch resolve names here, so a name
is never turned into a storage key by string building: only keys recorded in a succeeded row
are ever read.
"""

from __future__ import annotations

import re

from service.jobs.store import JobStore

#: ``<mode>_<seed>_<sha256>_<unix seconds>_[thumbnail_]<index>.<ext>[.json]``
OUTPUT_NAME = re.compile(
    r"^(?P<job>[a-z0-9]+_\d{1,10}_[0-9a-f]{64}_\d{1,12})_(?:thumbnail_)?\d{1,4}\.(?:png|jpeg|webp|txt)(?:\.json)?$"
)


class SourceS3Refused(ValueError):
    """A source-s3 stage named something that is not a recorded output of a succeeded job."""

    code = "source_s3_refused"


def image_name(job_name: str, index: int, ext: str) -> str:
    """The name of a job's ``index``-th output image."""
    return f"{job_name}_{index}.{ext}"


def thumbnail_name(job_name: str, index: int, ext: str) -> str:
    """The name of the thumbnail of a job's ``index``-th output image."""
    return f"{job_name}_thumbnail_{index}.{ext}"


def sidecar_name(image: str) -> str:
    """The name of an output image's metadata sidecar."""
    return f"{image}.json"


def recorded_key(jobs: JobStore, filename: str, *, owner: str | None = None) -> str | None:
    """The object key of ``filename`` if it names an output of a succeeded job (of ``owner``, when
    given), else None."""
    match = OUTPUT_NAME.match(filename)
    if match is None:
        return None
    return jobs.recorded_output_key(match["job"], filename, owner=owner)

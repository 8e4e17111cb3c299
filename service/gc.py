"""The orphan collector: deletes output and input objects that no job row records and none ever will.

Workers write under ``outputs/<job>/<attempt>/`` and the job row records the keys of the one
attempt that succeeded (see ``service/jobrun.py``). A worker that died between its uploads and its
commit, or one fenced off by a rescue, leaves objects no row names. Those are never served, but
they cost storage; this pass, run from a schedule (``onnx-web gc``, ``infra/k8s/gc.yaml``), deletes
them. It reads the row, never guesses: an object is deleted only when

- its job succeeded and the row does not record it,
- its job failed or was cancelled (a terminal row without outputs serves nothing),
- its job is pending or running and the object belongs to an attempt before the live one,
- its job does not exist (objects are written only after a claim, so only for deleted rows).

A running attempt's own objects are never touched: they are still being written.

Uploaded inputs (``inputs/<job>/<field>.png``) are collected too. A job row records its inputs in
its ``inputs`` column, every key under ``inputs/<its own name>/`` (``input_key``), so an input whose
job has a row, in any state, is kept: pending, running, finished (outputs kept or not), retried,
and an idempotent retry answered that row. Rows are never deleted. An input whose job has no row
was left by a submission whose database failed around its commit (the api keeps those inputs in
case the row committed; ``service.resources.submit``) or is one still being submitted: its inputs
are stored before its row commits. So it is deleted only once older than ``min_age_s``
(``Config.gc_input_age_s``), by the store's clock against this process's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.jobs.store import JobState, JobStore, JobView
from service.storage import ObjectStore

log = logging.getLogger(__name__)

OUTPUTS_PREFIX = "outputs/"
INPUTS_PREFIX = "inputs/"
#: Job rows read per query.
LOOKUP_BATCH = 100


@dataclass(frozen=True)
class Collected:
    """What one pass found and did."""

    jobs: int
    objects: int
    orphans: int
    deleted: int


@dataclass(frozen=True)
class CollectedInputs:
    """What one pass over the uploaded inputs found and did."""

    objects: int
    #: Inputs of no job, older than the minimum age.
    orphans: int
    #: Inputs of no job, too recent to tell from a submission still committing: kept.
    recent: int
    deleted: int


def _attempt(key: str) -> int | None:
    """The attempt number of ``outputs/<job>/<attempt>/<file>``, or None for another shape."""
    parts = key.split("/")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def is_orphan(key: str, view: JobView | None) -> bool:
    """Whether ``key`` can never be served by its job (see the module docstring)."""
    attempt = _attempt(key)
    if view is None or attempt is None:
        return True
    if view.state == JobState.SUCCESS:
        return key not in set((view.output_keys or {}).values())
    if view.state in (JobState.FAILED, JobState.CANCELLED):
        return True
    live = view.attempt if view.state == JobState.RUNNING else view.attempt + 1
    return attempt < live


def collect_orphans(jobs: JobStore, store: ObjectStore, *, dry_run: bool = False) -> Collected:
    """Find (and unless ``dry_run`` delete) every orphaned output object."""
    by_job: dict[str, list[str]] = defaultdict(list)
    keys = store.list_keys(OUTPUTS_PREFIX)
    for key in keys:
        by_job[key.split("/")[1]].append(key)
    names = sorted(by_job)
    orphans: list[str] = []
    for start in range(0, len(names), LOOKUP_BATCH):
        batch = names[start : start + LOOKUP_BATCH]
        views = jobs.get_many(batch)
        orphans += [key for name in batch for key in by_job[name] if is_orphan(key, views.get(name))]
    deleted = _delete(store, orphans, dry_run)
    log.info(
        "orphan collection",
        extra={
            "action": "gc",
            "jobs": len(names),
            "objects": len(keys),
            "orphans": len(orphans),
            "deleted": deleted,
            "dry_run": dry_run,
        },
    )
    return Collected(jobs=len(names), objects=len(keys), orphans=len(orphans), deleted=deleted)


def collect_input_orphans(
    jobs: JobStore,
    store: ObjectStore,
    *,
    min_age_s: float,
    now: datetime | None = None,
    dry_run: bool = False,
) -> CollectedInputs:
    """Find (and unless ``dry_run`` delete) every uploaded input of no job written over
    ``min_age_s`` before ``now`` (the current time by default)."""
    written = store.list_written(INPUTS_PREFIX)
    by_job: dict[str, list[str]] = defaultdict(list)
    for key in written:
        by_job[key.split("/")[1]].append(key)
    names = sorted(by_job)
    unclaimed: list[str] = []
    for start in range(0, len(names), LOOKUP_BATCH):
        batch = names[start : start + LOOKUP_BATCH]
        existing = jobs.existing_names(batch)
        unclaimed += [key for name in batch if name not in existing for key in by_job[name]]
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=min_age_s)
    orphans = [key for key in unclaimed if written[key] <= cutoff]
    deleted = _delete(store, orphans, dry_run)
    log.info(
        "input orphan collection",
        extra={
            "action": "gc_inputs",
            "objects": len(written),
            "orphans": len(orphans),
            "recent": len(unclaimed) - len(orphans),
            "deleted": deleted,
            "dry_run": dry_run,
        },
    )
    return CollectedInputs(
        objects=len(written), orphans=len(orphans), recent=len(unclaimed) - len(orphans), deleted=deleted
    )


def _delete(store: ObjectStore, keys: list[str], dry_run: bool) -> int:
    """Delete ``keys`` unless ``dry_run``; how many were deleted."""
    if dry_run:
        return 0
    for key in keys:
        store.delete(key)
    return len(keys)

"""The orphan collector deletes exactly the output objects no job row can ever serve."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import text

from service.gc import collect_orphans
from service.jobs.store import JobState, JobStore
from service.storage import S3ObjectStore, output_key
from tests.fixtures.postgres import new_job

pytestmark = pytest.mark.integration


def put(store: S3ObjectStore, name: str, attempt: int, file: str) -> str:
    key = output_key(name, attempt, file)
    store.put_bytes(key, b"png", "image/png")
    return key


def expire_lease(engine: sqlalchemy.Engine, name: str) -> None:
    """Move the lease into the past in SQL, as a dead worker's would be."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 minute' WHERE name = :n"),
            {"n": name},
        )


def test_only_objects_no_row_can_serve_are_deleted(
    job_store: JobStore, engine: sqlalchemy.Engine, object_store: S3ObjectStore
) -> None:
    # A job whose first attempt died after uploading, then succeeded on its second.
    rescued = new_job()
    job_store.enqueue(rescued)
    first = job_store.claim("w1", platform="cpu", held_models=[])
    assert first is not None and first.attempt == 1
    dead = put(object_store, rescued.name, 1, f"{rescued.name}_0.png")
    expire_lease(engine, rescued.name)
    assert [r.state for r in job_store.rescue_expired()] == [JobState.PENDING]
    second = job_store.claim("w2", platform="cpu", held_models=[])
    assert second is not None and second.attempt == 2
    live = put(object_store, rescued.name, 2, f"{rescued.name}_0.png")
    assert job_store.finish_success(
        second.id,
        "w2",
        2,
        outputs=[f"{rescued.name}_0.png"],
        thumbnails=[],
        metadata=[{}],
        output_keys={f"{rescued.name}_0.png": live},
        steps=(1, 1),
        stages=(1, 1),
        tiles=(0, 0),
    )

    # A job running its first attempt right now: its objects are still being written.
    running = new_job()
    job_store.enqueue(running)
    claimed = job_store.claim("w3", platform="cpu", held_models=[])
    assert claimed is not None and claimed.name == running.name
    in_progress = put(object_store, running.name, 1, f"{running.name}_0.png")

    # A failed job's objects, and objects of a job with no row at all.
    failed = new_job()
    job_store.enqueue(failed)
    failing = job_store.claim("w4", platform="cpu", held_models=[])
    assert failing is not None
    failed_key = put(object_store, failed.name, 1, f"{failed.name}_0.png")
    assert (
        job_store.finish_failed(failing.id, "w4", 1, reason="error", message="x", retryable=False)
        == JobState.FAILED
    )
    stray = put(object_store, "txt2img_1_" + "f" * 64 + "_1", 1, "x_0.png")

    dry = collect_orphans(job_store, object_store, dry_run=True)
    assert (dry.jobs, dry.objects, dry.orphans, dry.deleted) == (4, 5, 3, 0)
    assert len(object_store.list_keys("outputs/")) == 5

    done = collect_orphans(job_store, object_store)
    assert done.deleted == 3
    assert object_store.list_keys("outputs/") == sorted([live, in_progress])
    for key in (dead, failed_key, stray):
        assert not object_store.exists(key)
    assert collect_orphans(job_store, object_store).orphans == 0, "a second pass finds nothing"

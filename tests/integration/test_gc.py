"""The orphan collector deletes exactly the objects no job row can ever serve: outputs of dead
attempts, and uploaded inputs of submissions whose row never came, once past a safe age."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy
import urllib3
from sqlalchemy import text

from service.config import Config
from service.gc import collect_input_orphans, collect_orphans
from service.jobs.store import JobState, JobStore
from service.storage import S3ObjectStore, output_key
from tests.fixtures.postgres import new_job
from tests.integration.api import DatabaseLost, api_client, make_models, png

pytestmark = pytest.mark.integration

SOURCE = (120, 30, 200)


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


def submit(
    client: falcon.testing.TestClient, route: str, files: list[str], **options: Any
) -> falcon.testing.Result:
    """POST a submission with these uploads (a chain's document in ``chain``)."""
    fields: dict[str, Any] = {name: (f"{name}.png", png(SOURCE, 64), "image/png") for name in files}
    if "chain" in options:
        fields["chain"] = json.dumps(options.pop("chain"))
    body, content_type = urllib3.encode_multipart_formdata(fields)
    headers = {"Content-Type": content_type, **options.pop("headers", {})}
    return client.simulate_post(f"/api/{route}", params={"prompt": "a cat"}, body=body, headers=headers)


def recorded_inputs(engine: sqlalchemy.Engine) -> dict[str, str]:
    """Every input key a job row records, with that job's state."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT state, inputs FROM jobs")).all()
    return {key: str(row.state) for row in rows for key in (row.inputs or {}).values()}


def written_after(store: S3ObjectStore, moment: datetime) -> datetime:
    """Wait until the store's clock has passed ``moment`` (its times have a resolution of a second
    or so); the store's time then."""
    for _ in range(100):
        store.put_bytes("clock/probe", b"", "text/plain")
        now = store.list_written("clock/")["clock/probe"]
        if now > moment:
            return now
        time.sleep(0.1)
    raise AssertionError(f"the store's clock did not pass {moment}")


def test_inputs_of_no_job_are_deleted_once_old_and_every_job_keeps_its_own(
    engine: sqlalchemy.Engine, object_store: S3ObjectStore, tmp_path: Path
) -> None:
    jobs = DatabaseLost(engine, lease_s=30.0, affinity_window_s=0.0)
    client = api_client(jobs, object_store, make_models(tmp_path / "models"), tmp_path)

    def accepted(result: falcon.testing.Result) -> str:
        assert result.status_code == 200, result.text
        return str(result.json["name"])

    def claim(name: str) -> Any:
        claimed = jobs.claim("w", platform="cpu", held_models=[])
        assert claimed is not None and claimed.name == name
        return claimed

    # Jobs in every state, each with inputs: running, finished with outputs, failed, retried.
    claim(accepted(submit(client, "inpaint", ["source", "mask"])))
    done = claim(accepted(submit(client, "img2img", ["source"])))
    key = output_key(done.name, done.attempt, f"{done.name}_0.png")
    assert jobs.finish_success(
        done.id,
        "w",
        done.attempt,
        outputs=[f"{done.name}_0.png"],
        thumbnails=[],
        metadata=[{}],
        output_keys={f"{done.name}_0.png": key},
        steps=(1, 1),
        stages=(1, 1),
        tiles=(0, 0),
    )
    failed = claim(accepted(submit(client, "img2img", ["source"])))
    assert jobs.finish_failed(failed.id, "w", 1, reason="e", message="x", retryable=False) == JobState.FAILED
    retried = claim(accepted(submit(client, "img2img", ["source"])))
    assert jobs.finish_failed(retried.id, "w", 1, reason="e", message="x", retryable=True) == JobState.PENDING
    # A chain's per-stage upload, and a job whose commit reply was lost, found again by its retry.
    chain = {"stages": [{"name": "redo", "type": "blend-img2img", "params": {"strength": 0.5}}]}
    accepted(submit(client, "chain", ["source:redo"], chain=chain))
    keyed = {"headers": {"Idempotency-Key": "lost-reply"}}
    jobs.fail_next = "after_commit"
    assert submit(client, "img2img", ["source"], **keyed).status_code == 503
    accepted(submit(client, "img2img", ["source"], **keyed))
    referenced = recorded_inputs(engine)
    assert set(referenced.values()) == {"running", "success", "failed", "pending"}
    assert len(referenced) == 7 and "source-redo.png" in " ".join(referenced)

    # Submissions whose row never committed: one now, one a moment later.
    jobs.fail_next = "before_commit"
    assert submit(client, "img2img", ["source"]).status_code == 503
    (old,) = set(object_store.list_keys("inputs/")) - set(referenced)
    old_written = object_store.list_written("inputs/")[old]
    written_after(object_store, old_written)
    jobs.fail_next = "before_commit"
    assert submit(client, "img2img", ["source"]).status_code == 503
    (fresh,) = set(object_store.list_keys("inputs/")) - set(referenced) - {old}
    fresh_written = object_store.list_written("inputs/")[fresh]
    assert fresh_written > old_written >= max(object_store.list_written("inputs/")[k] for k in referenced)

    # gc runs an age after a moment between the two: only the earlier is old enough.
    age_s = Config().gc_input_age_s
    between = old_written + (fresh_written - old_written) / 2 + timedelta(seconds=age_s)
    dry = collect_input_orphans(jobs, object_store, min_age_s=age_s, now=between, dry_run=True)
    assert (dry.objects, dry.orphans, dry.recent, dry.deleted) == (9, 1, 1, 0)
    assert object_store.exists(old)
    done_pass = collect_input_orphans(jobs, object_store, min_age_s=age_s, now=between)
    assert (done_pass.orphans, done_pass.deleted) == (1, 1)
    assert object_store.list_keys("inputs/") == sorted([*referenced, fresh])

    # Much later the other goes too; every job's inputs stay whatever their age.
    later = fresh_written + timedelta(seconds=age_s + 1)
    assert collect_input_orphans(jobs, object_store, min_age_s=age_s, now=later).deleted == 1
    assert object_store.list_keys("inputs/") == sorted(referenced)
    assert collect_input_orphans(jobs, object_store, min_age_s=age_s, now=later).orphans == 0

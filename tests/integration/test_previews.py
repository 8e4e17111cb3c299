"""Live previews on real Postgres and S3: shown while a job runs, gone once its images are made.

A worker runs demo txt2img jobs in process. Its job store is wrapped so that, the moment a preview
is noted in the job's row, the test asks the api what a client polling then would see: the status
record's ``preview`` and the JPEG behind its URL.
"""

from __future__ import annotations

import functools
import io
import uuid
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy
from PIL import Image

from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.storage import S3ObjectStore, preview_key
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, job_row
from tests.integration.api import api_client
from tests.integration.workers import cpu_sessions, make_job, run_worker_in_process

pytestmark = pytest.mark.integration

STEPS = 4


class WatchedStore(JobStore):
    """The queue, asking the api for the job's status and preview whenever a preview is noted."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        super().__init__(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
        self.client: falcon.testing.TestClient | None = None
        #: The jobs watched.
        self.names: list[str] = []
        self.seen: list[tuple[int | None, dict[str, Any], falcon.testing.Result | None]] = []

    def record_preview(self, job_id: Any, worker_id: str, attempt: int, step: int | None) -> bool:
        noted = super().record_preview(job_id, worker_id, attempt, step)
        assert self.client is not None
        (view,) = (v for v in self.get_many(self.names).values() if v.id == job_id)
        status = self.client.simulate_get("/api/job/status", params={"jobs": view.name}).json[0]
        image = self.client.simulate_get(status["preview"]["url"]) if "preview" in status else None
        self.seen.append((step, status, image))
        return noted


#: This module's in-process worker, run for the test's one job; each test says how often it makes previews.
run_worker = functools.partial(run_worker_in_process, worker_id="preview-worker", max_jobs=1, upload_depth=0)


def test_a_running_job_shows_a_preview_until_its_images_are_made(
    database_url: str, engine: sqlalchemy.Engine, object_store: S3ObjectStore, models: Path, tmp_path: Path
) -> None:
    jobs = WatchedStore(engine)
    jobs.client = api_client(jobs, object_store, models, tmp_path)
    job = jobs.enqueue(make_job(models, steps=STEPS, size=128, seed=3))
    jobs.names = [job.name]

    # Every step may show one (a zero interval); the 3% budget still applies.
    run_worker(database_url, jobs, object_store, models, sessions=cpu_sessions(2), preview_interval_s=1e-6)

    shown = [(step, status, image) for step, status, image in jobs.seen if step is not None]
    assert shown, "no preview was shown"
    step, status, image = shown[0]
    assert status["status"] == "running"
    assert status["preview"] == {"url": f"/api/job/preview?job={job.name}&step={step}", "step": step}
    assert image is not None and image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg" and image.headers["cache-control"] == "no-store"
    preview = Image.open(io.BytesIO(image.content))
    assert max(preview.size) <= 256 and preview.size[0] == preview.size[1]
    # The last note clears it: the object is gone, and the finished job shows none.
    assert jobs.seen[-1][0] is None and "preview" not in jobs.seen[-1][1]
    row = job_row(engine, job.name)
    assert row["state"] == JobState.SUCCESS.value and row["preview"] is None
    assert preview_key(job.name, 1) not in object_store.list_keys(f"outputs/{job.name}/")
    assert jobs.client.simulate_get("/api/job/preview", params={"job": job.name}).status_code == 404


def test_previews_can_be_turned_off_and_unknown_jobs_have_none(
    database_url: str, engine: sqlalchemy.Engine, object_store: S3ObjectStore, models: Path, tmp_path: Path
) -> None:
    jobs = WatchedStore(engine)
    jobs.client = api_client(jobs, object_store, models, tmp_path)
    job = jobs.enqueue(make_job(models, steps=2, size=64, seed=4))
    jobs.names = [job.name]

    run_worker(database_url, jobs, object_store, models, sessions=cpu_sessions(2), preview_interval_s=0)

    assert jobs.seen == [] and job_row(engine, job.name)["state"] == JobState.SUCCESS.value
    assert (
        jobs.client.simulate_get("/api/job/preview", params={"job": f"nope_{uuid.uuid4().hex}"}).status_code
        == 404
    )
    assert jobs.client.simulate_get("/api/job/preview").status_code == 400

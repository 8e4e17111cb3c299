"""The output stage: a job's images are stored and committed while the next job generates.

Workers run in process against the test's real Postgres, a real S3 server and the demo models, so
that a test can stop one job at its first upload (``GatedStore``): its images are made and handed
over, its commit has not happened, and the worker's main thread has gone on to claim the next job.
While the job waits there, the test takes its lease away, cuts S3 off or stops the worker; the job
must end as it would have without the overlap (``ONNX_WEB_UPLOAD_DEPTH=0``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from pipelines.models.sessions import CPU_PROVIDER, SessionCache, SessionSettings
from service.config import Config
from service.jobrun import JobRunner
from service.jobs.notify import Notifier
from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, JobStore, NewJob
from service.stack import S3Credentials
from service.storage import S3ObjectStore, output_prefix, parse_endpoint
from service.worker import Worker
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, shift_time
from tests.fixtures.s3 import FAST_RETRY
from tests.integration.workers import (
    FAST,
    Bucket,
    SeveringProxy,
    Workers,
    decoded_outputs,
    job_row,
    make_job,
    wait_until,
    worker_row_exists,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Long enough for anything a test waits on in process (a model load on two busy cores).
WAIT_S = 60.0
WORKER_ID = "overlap"
#: Steps of a job still generating when the test acts (over a second at 64x64).
LONG_STEPS = 300


class GatedStore(S3ObjectStore):
    """The real S3 store, whose uploads under ``gated`` wait until the test opens the gate."""

    def __init__(self, credentials: S3Credentials, bucket: str, *, endpoint: str | None = None) -> None:
        host, secure = parse_endpoint(endpoint or credentials.endpoint)
        super().__init__(
            host, credentials.access_key, credentials.secret_key, bucket, secure=secure, retry=FAST_RETRY
        )
        #: Key prefix whose uploads wait; empty: none do.
        self.gated = ""
        #: Set when the first gated upload arrives (its job is in the output stage).
        self.reached = threading.Event()
        self.opened = threading.Event()

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        if self.gated and key.startswith(self.gated):
            self.reached.set()
            self.opened.wait()
        return super().put_bytes(key, data, content_type, metadata)


@pytest.fixture(scope="module")
def sessions() -> SessionCache:
    """One session cache for the module, so each test does not load the demo model again."""
    return SessionCache(2, SessionSettings(providers=(CPU_PROVIDER,)))


@pytest.fixture
def severable(s3_credentials: S3Credentials, object_store: S3ObjectStore) -> tuple[SeveringProxy, GatedStore]:
    """A gated store on this test's bucket, reached through a proxy the test can sever."""
    upstream, secure = parse_endpoint(s3_credentials.endpoint)
    if secure:
        pytest.skip("a TCP proxy breaks TLS hostname checks; run storage fault tests against plain HTTP")
    proxy = SeveringProxy(upstream)
    return proxy, GatedStore(s3_credentials, object_store.bucket, endpoint=proxy.endpoint)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The log records of every thread of the in-process worker, INFO and up."""
    caplog.set_level(logging.INFO)
    return caplog


def worker_config(database_url: str, models: Path, bucket: str, **overrides: Any) -> Config:
    """The worker's settings: the recovery tests' short clock unless ``overrides`` say otherwise."""
    settings: dict[str, Any] = {
        "lease_s": FAST.lease_s,
        "heartbeat_s": FAST.heartbeat_s,
        "rescue_interval_s": FAST.rescue_interval_s,
        "poll_interval_s": FAST.poll_interval_s,
        **overrides,
    }
    return Config(
        database_url=database_url, models_path=models, s3_bucket=bucket, worker_id=WORKER_ID, **settings
    )


@contextmanager
def running(worker: Worker, store: GatedStore, max_jobs: int | None = None) -> Iterator[threading.Thread]:
    """``worker.run`` in a thread; on exit the worker is stopped, the gate opened, the thread joined."""
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": max_jobs}, name="worker-main")
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        store.opened.set()
        thread.join()


def records(logs: pytest.LogCaptureFixture, **match: Any) -> list[logging.LogRecord]:
    """The captured records whose extra keys have all the given values."""
    return [r for r in logs.records if all(getattr(r, k, None) == v for k, v in match.items())]


def outcomes(logs: pytest.LogCaptureFixture, job: NewJob) -> dict[int, str]:
    """How each attempt of ``job`` ended, from its summary lines."""
    return {r.attempt: r.outcome for r in records(logs, action="job_summary", job=job.name)}


def ended(engine: sqlalchemy.Engine, name: str) -> dict[str, Any]:
    """The job's row once it is over."""

    def over() -> dict[str, Any] | None:
        row = job_row(engine, name)
        return row if JobState(row["state"]).terminal else None

    return wait_until(over, timeout_s=WAIT_S, what=f"job {name[:16]}… to end")


def images(bucket: Bucket, row: Mapping[str, Any]) -> list[bytes]:
    """The pixels of the job's image and thumbnail, read back from the bucket."""
    decoded = decoded_outputs(bucket, row["output_keys"])
    return [image.tobytes() for name, image in decoded if name.endswith(".png")]


def test_overlapped_jobs_store_the_same_images_as_jobs_stored_in_turn(
    database_url: str,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    sessions: SessionCache,
    models: Path,
) -> None:
    bucket = Bucket(s3_credentials, object_store.bucket)
    stored: dict[int, list[list[bytes]]] = {}
    overlaps: dict[int, int] = {}
    for depth in (0, 1):
        jobs = [make_job(models, steps=2, seed=seed) for seed in range(4)]
        for job in jobs:
            job_store.enqueue(job)
        config = worker_config(database_url, models, object_store.bucket, upload_depth=depth)
        with closing(Notifier(database_url)) as notifier:
            Worker(config, jobs=job_store, store=object_store, sessions=sessions, notifier=notifier).run(
                max_jobs=len(jobs)
            )
        rows = [job_row(engine, job.name) for job in jobs]
        assert [(row["state"], row["attempt"]) for row in rows] == [(JobState.SUCCESS, 1)] * len(jobs)
        stored[depth] = [images(bucket, row) for row in rows]
        # A job claimed before the one before it was committed: its generation overlapped that upload.
        by_claim = sorted(rows, key=lambda row: row["started_at"])
        overlaps[depth] = sum(
            later["started_at"] < earlier["finished_at"] for earlier, later in pairwise(by_claim)
        )
    assert stored[1] == stored[0]
    assert overlaps[0] == 0, "without the stage, each job is committed before the next claim"
    assert overlaps[1] >= 1, "with the stage, the next job is claimed while the last one uploads"


def test_a_job_whose_lease_ran_out_while_it_uploaded_is_not_committed_by_the_stale_attempt(
    database_url: str,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    sessions: SessionCache,
    models: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    # Neither a heartbeat nor the worker's own rescue comes within the test: only the commit's
    # fence can stop the stale attempt, and the test rescues the job itself.
    config = worker_config(
        database_url, models, object_store.bucket, lease_s=600.0, heartbeat_s=500.0, rescue_interval_s=500.0
    )
    store = GatedStore(s3_credentials, object_store.bucket)
    job = make_job(models, steps=2)
    store.gated = output_prefix(job.name, 1)
    job_store.enqueue(job)
    with closing(Notifier(database_url)) as notifier:
        worker = Worker(config, jobs=job_store, store=store, sessions=sessions, notifier=notifier)
        # The stale attempt and the rescued one: then the worker stops, its stage emptied.
        with running(worker, store, max_jobs=2) as thread:
            assert store.reached.wait(WAIT_S)
            shift_time(engine, job.name, column="lease_expires_at", seconds=1200)
            assert [rescued.name for rescued in job_store.rescue_expired()] == [job.name]
            store.opened.set()
            thread.join()

    row = job_row(engine, job.name)
    assert (row["state"], row["attempt"], row["rescue_count"]) == (JobState.SUCCESS, 2, 1), row
    assert outcomes(logs, job) == {1: "fenced", 2: "success"}
    assert records(logs, action="fenced", job=job.name, attempt=1), "the commit was refused, not skipped"
    assert all(key.startswith(output_prefix(job.name, 2)) for key in row["output_keys"].values())
    bucket = Bucket(s3_credentials, object_store.bucket)
    assert bucket.keys(output_prefix(job.name, 1)) == [], "the stale attempt left its uploads behind"


@pytest.mark.parametrize(
    ("max_attempts", "state", "outcome"), [(2, JobState.PENDING, "retry"), (1, JobState.FAILED, "failed")]
)
def test_an_upload_failing_in_the_output_stage_ends_the_attempt_as_storage_and_the_worker_waits(
    max_attempts: int,
    state: JobState,
    outcome: str,
    database_url: str,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    severable: tuple[SeveringProxy, GatedStore],
    object_store: S3ObjectStore,
    sessions: SessionCache,
    models: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    proxy, store = severable
    job = make_job(models, steps=2, max_attempts=max_attempts)
    store.gated = output_prefix(job.name, 1)
    job_store.enqueue(job)
    config = worker_config(database_url, models, object_store.bucket)
    with closing(Notifier(database_url)) as notifier, closing(proxy):
        worker = Worker(config, jobs=job_store, store=store, sessions=sessions, notifier=notifier)
        with running(worker, store):
            assert store.reached.wait(WAIT_S)
            # S3 goes away while the job's outputs wait to be uploaded: every connection is refused.
            proxy.sever()
            proxy.close()
            store.opened.set()
            wait_until(
                lambda: records(logs, action="dependency_wait", dependency="s3"),
                timeout_s=WAIT_S,
                what="the worker to wait for S3",
            )
            row = job_row(engine, job.name)

    assert (row["state"], row["attempt"]) == (state, 1), "one attempt spent, then the worker waits"
    assert [entry["reason"] for entry in row["errors"]] == ["storage"]
    assert "StorageError" in row["errors"][0]["message"]
    assert row["output_keys"] is None
    assert outcomes(logs, job) == {1: outcome}


class FailureDuringClaim(JobStore):
    """The queue, where an attempt in the output stage fails while the worker's first claim runs:
    ``claim_batch`` flags that failure (as ``JobRun._fail`` does) after claiming."""

    runner: JobRunner | None = None

    def claim_batch(self, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
        claimed = super().claim_batch(*args, **kwargs)
        if claimed and self.runner is not None:
            self.runner.attempt_failed.set()
            self.runner = None
        return claimed


def test_a_claim_made_while_an_upload_failed_is_handed_back_until_s3_is_checked(
    database_url: str,
    engine: sqlalchemy.Engine,
    severable: tuple[SeveringProxy, GatedStore],
    object_store: S3ObjectStore,
    sessions: SessionCache,
    models: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Had the worker kept the claim, S3 being away, the job would spend an attempt on it."""
    proxy, store = severable
    queue = FailureDuringClaim(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
    config = worker_config(database_url, models, object_store.bucket)
    with closing(Notifier(database_url)) as notifier, closing(proxy):
        worker = Worker(config, jobs=queue, store=store, sessions=sessions, notifier=notifier)
        queue.runner = worker.runner
        proxy.close()
        job = make_job(models, steps=2)
        queue.enqueue(job)
        with running(worker, store):
            wait_until(
                lambda: records(logs, action="dependency_wait", dependency="s3"),
                timeout_s=WAIT_S,
                what="the worker to wait for S3",
            )
            row = job_row(engine, job.name)

    assert (row["state"], row["attempt"], row["errors"]) == (JobState.PENDING, 0, []), row
    assert outcomes(logs, job) == {}, "the job ran while S3 was away"


@pytest.mark.parametrize("grace", ["enough", "spent"])
def test_a_stopped_worker_empties_its_output_stage_before_it_retires(
    grace: str,
    database_url: str,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    sessions: SessionCache,
    models: Path,
    logs: pytest.LogCaptureFixture,
) -> None:
    """``enough``: the job in the stage and the one generating are both committed; ``spent``
    (the grace time ran out): both are handed back unspent, their uploads deleted."""
    store = GatedStore(s3_credentials, object_store.bucket)
    first, second = make_job(models, steps=2, seed=1), make_job(models, steps=2, seed=2)
    store.gated = output_prefix(first.name, 1)
    job_store.enqueue(first)
    job_store.enqueue(second)
    config = worker_config(database_url, models, object_store.bucket)
    with closing(Notifier(database_url)) as notifier:
        worker = Worker(config, jobs=job_store, store=store, sessions=sessions, notifier=notifier)
        with running(worker, store) as thread:
            assert store.reached.wait(WAIT_S)
            wait_until(
                lambda: job_row(engine, second.name)["state"] == JobState.RUNNING,
                timeout_s=WAIT_S,
                what="the next job to be claimed while the first one uploads",
            )
            worker.stop()
            if grace == "spent":
                worker.release_requested.set()
            store.opened.set()
            thread.join()
            rows = [job_row(engine, job.name) for job in (first, second)]

    (stopped,) = records(logs, action="stop", worker=WORKER_ID)
    assert not worker_row_exists(engine, WORKER_ID)
    bucket = Bucket(s3_credentials, object_store.bucket)
    for job, row in zip((first, second), rows, strict=True):
        if grace == "enough":
            assert (row["state"], row["attempt"]) == (JobState.SUCCESS, 1), row
            committed_at = row["finished_at"].timestamp()
            assert committed_at <= stopped.created, "the worker retired before the stage was empty"
            assert outcomes(logs, job) == {1: "success"}
        else:
            assert (row["state"], row["attempt"], row["errors"]) == (JobState.PENDING, 0, []), row
            assert outcomes(logs, job) == {1: "released"}
            assert bucket.keys(f"outputs/{job.name}/") == []


def test_a_worker_dying_in_its_output_stage_loses_neither_that_job_nor_the_next(
    database_url: str,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    models: Path,
    tmp_path: Path,
) -> None:
    """The victim dies after uploading its first job's outputs, before their commit, while its main
    thread generates the next job: both are rescued and run again, and each exposes one attempt."""
    workers = Workers(
        database_url=database_url,
        s3=s3_credentials,
        bucket=object_store.bucket,
        models=models,
        log_dir=tmp_path,
    )
    try:
        victim = workers.start("victim", ONNX_WEB_FAULT_POINT="after_put_before_commit")
        rescuer = workers.start("rescuer")
        victim.wait_started()
        rescuer.wait_started()
        # Only the victim claims until it dies: the first job, then the next while the first uploads.
        rescuer.send(signal.SIGSTOP)
        uploaded, generating = make_job(models, steps=2, seed=1), make_job(models, steps=LONG_STEPS, seed=2)
        job_store.enqueue(uploaded)
        job_store.enqueue(generating)
        assert victim.wait_exit(WAIT_S) == 137, victim.tail()
        next_taken = job_row(engine, generating.name)["attempt"] == 1
        rescuer.send(signal.SIGCONT)

        bucket = Bucket(s3_credentials, object_store.bucket)
        for job in (uploaded, generating):
            row = ended(engine, job.name)
            assert row["state"] == JobState.SUCCESS and row["worker_id"] == "rescuer", row
            # Run again only if the victim held it: one rescue per attempt it lost.
            assert row["attempt"] == 1 + row["rescue_count"], row
            recorded = set(row["output_keys"].values())
            assert all(key.startswith(output_prefix(job.name, row["attempt"])) for key in recorded)
            stray = [key for key in bucket.keys(f"outputs/{job.name}/") if key not in recorded]
            # The first job's image, sidecar and thumbnail were uploaded; nobody will record them.
            assert len(stray) == (3 if job is uploaded else 0), stray
        assert job_row(engine, uploaded.name)["attempt"] == 2
        assert next_taken == (job_row(engine, generating.name)["rescue_count"] == 1)
    finally:
        workers.kill_all()

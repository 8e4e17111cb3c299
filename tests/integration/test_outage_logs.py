"""What an outage costs the log: the api's job events listener and a job's progress writes log the
loss once and the recovery once, and an attempt failed by an outage is one WARNING line, where an
unexpected error keeps its traceback at ERROR.

Real Postgres: a database that refuses connections (``ALLOW_CONNECTIONS false``, its sessions
ended) is the outage, as a stopped server is to its clients.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy
from psycopg import sql

from pipelines.context import Counter, Progress
from service.config import Config
from service.db import libpq_url, make_engine
from service.errors import StorageError
from service.events import EventHub
from service.jobrun import JobRun, JobRunner
from service.jobs.notify import EVENTS_CHANNEL, Notifier
from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, JobStore
from service.storage import MemoryObjectStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, new_job
from tests.integration.workers import job_row, wait_until

pytestmark = [pytest.mark.integration]

#: How long the database refuses the listener: a few of its reconnects, each once logged before.
OUTAGE_S = 4.0


@contextmanager
def refusing(admin_url: str, database_url: str) -> Iterator[None]:
    """The test's database refuses connections and its sessions are ended, until the block ends."""
    name = sqlalchemy.engine.make_url(database_url).database
    assert name is not None
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def test_the_listener_logs_a_lost_connection_once_and_its_return_once(
    postgres_admin_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub = EventHub(database_url)
    subscription = hub.subscribe(["x"])

    def hears_x() -> bool:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, 'x')", (EVENTS_CHANNEL,))
        return "x" in subscription.wait(0.5)

    try:
        wait_until(hears_x, timeout_s=30, what="the listener to hear a notification")
        with caplog.at_level(logging.INFO, logger="service"):
            with refusing(postgres_admin_url, database_url):
                time.sleep(OUTAGE_S)  # the outage's length: the listener retries meanwhile
            wait_until(hears_x, timeout_s=30, what="the listener to be back")
    finally:
        hub.stop()

    listener = [r for r in caplog.records if r.name in ("service.events", "service.jobs.notify")]
    assert [(r.levelname, r.action) for r in listener] == [  # type: ignore[attr-defined]
        ("WARNING", "listen_lost"),
        ("INFO", "listen_back"),
    ]
    assert listener[0].exc_info is None and "\n" not in listener[0].error  # type: ignore[attr-defined]
    assert listener[1].failures >= 3  # type: ignore[attr-defined]


def claimed_run(job_store: JobStore) -> JobRun:
    """A claimed job's ``JobRun``, as a worker holds it (without its lease thread)."""
    job_store.enqueue(new_job(max_attempts=3))
    job = job_store.claim("w1", platform="cpu", held_models=())
    assert isinstance(job, ClaimedJob)
    runner = JobRunner(Config(worker_id="w1"), job_store, MemoryObjectStore(), threading.Event())
    return JobRun(runner, job)


def test_progress_writes_failing_through_an_outage_are_logged_once_and_their_recovery_once(
    job_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    run = claimed_run(job_store)
    down = make_engine("postgresql://nobody:secret@127.0.0.1:1/onnx_web")
    up = run.runner.jobs
    run.latest = Progress()

    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        run.runner.jobs = JobStore(down, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
        for _ in range(20):
            run.flush()
        run.runner.jobs = up
        run.flush()
        run.flush()

    writes = [r for r in caplog.records if getattr(r, "action", None) == "progress_write"]
    assert [(r.levelname, r.getMessage(), r.failures) for r in writes] == [  # type: ignore[attr-defined]
        ("WARNING", "progress write failed", 1),
        ("INFO", "progress writes recovered", 20),
    ]
    assert writes[0].job == run.job.name and writes[0].exc_info is None  # type: ignore[attr-defined]


def test_an_attempt_failed_by_an_outage_is_one_warning_line_and_an_unexpected_error_keeps_its_traceback(
    job_store: JobStore, engine: sqlalchemy.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    outage, bug = claimed_run(job_store), claimed_run(job_store)

    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        assert outage._fail(StorageError("s3 put_object failed: connection refused")) == "retry"
        assert bug._fail(RuntimeError("something nobody expected")) == "retry"

    failed = {r.job: r for r in caplog.records if getattr(r, "action", None) == "fail"}  # type: ignore[attr-defined]
    stored, unexpected = failed[outage.job.name], failed[bug.job.name]
    assert (stored.levelname, stored.reason, stored.exc_info) == ("WARNING", "storage", None)  # type: ignore[attr-defined]
    assert stored.error == "StorageError: s3 put_object failed: connection refused"  # type: ignore[attr-defined]
    assert unexpected.levelname == "ERROR" and unexpected.exc_info is not None
    assert job_row(engine, outage.job.name)["state"] == JobState.PENDING


def test_the_last_counters_are_written_when_generation_ends_not_after_the_upload(job_store: JobStore) -> None:
    """A job whose outputs wait on S3 (a hung store holds them for minutes) showed the steps of its
    last throttled progress write, often none, as if it had not generated at all."""
    run = claimed_run(job_store)
    run.report(Progress(steps=Counter(1, 3), stages=Counter(0, 2), tiles=Counter(0, 0)))  # written
    run.report(Progress(steps=Counter(3, 3), stages=Counter(1, 2), tiles=Counter(0, 0)))  # throttled

    before = job_store.get_many([run.job.name])[run.job.name]
    run.generation_done()
    after = job_store.get_many([run.job.name])[run.job.name]

    assert (before.steps, before.stages) == ((1, 3), (0, 2))
    assert (after.steps, after.stages) == ((3, 3), (1, 2))
    assert run.generated.is_set()


def test_a_workers_listener_logs_a_lost_connection_once_however_often_it_polls(
    postgres_admin_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(database_url)
    try:
        with caplog.at_level(logging.INFO, logger="service.jobs.notify"):
            with refusing(postgres_admin_url, database_url):
                for _ in range(10):  # a worker polls every 2 s while the listener is away
                    assert not notifier.wait(0.05)
            notifier.wait(0.05)
        listens = [r for r in caplog.records if getattr(r, "action", "").startswith("listen_")]
        assert [(r.levelname, r.getMessage()) for r in listens] == [
            ("WARNING", "listen connection lost; polling"),
            ("INFO", "listen connection back"),
        ]
        assert listens[1].failures == 10  # type: ignore[attr-defined]
    finally:
        notifier.close()


def test_heartbeats_failing_through_an_outage_are_logged_once_and_their_recovery_once(
    job_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    run = claimed_run(job_store)
    run.runner.config = dataclasses.replace(run.runner.config, heartbeat_s=0.02)
    run.config = run.runner.config
    up = run.runner.jobs
    run.runner.jobs = JobStore(
        make_engine("postgresql://nobody:secret@127.0.0.1:1/onnx_web"),
        lease_s=TEST_LEASE_S,
        affinity_window_s=TEST_AFFINITY_WINDOW_S,
    )
    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        beating = threading.Thread(target=run.keep_lease)
        beating.start()
        wait_until(lambda: run._heartbeat_outage.failures >= 5, timeout_s=10, what="failed heartbeats")
        run.runner.jobs = up
        wait_until(lambda: run._heartbeat_outage.failures == 0, timeout_s=10, what="a heartbeat")
        run.done.set()
        beating.join()

    beats = [r for r in caplog.records if getattr(r, "action", None) == "heartbeat"]
    assert [(r.levelname, r.getMessage()) for r in beats] == [
        ("WARNING", "heartbeat failed"),
        ("INFO", "heartbeats recovered"),
    ]

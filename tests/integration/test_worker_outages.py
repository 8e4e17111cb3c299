"""A worker waits out Postgres and S3 outages: same process, one WARNING line per wait, then on.

Real ``onnx-web worker`` processes (``workers.Workers``, with the recovery tests' short clock) run
against a Postgres or an S3 server of the test's own, which the test stops and starts again; the
session's servers are shared with other tests and stay up. spec/reliability.md Q7 (``down``), S2.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from service.db import create_database, make_engine, upgrade_head
from service.jobs.store import JobStore
from service.retries import OUTAGE_WAIT_MAX_S
from service.stack import EmbeddedS3, S3Credentials, free_port, temporary_postgres
from tests.integration.stack_process import pg_start, pg_stop
from tests.integration.workers import FAST, Workers, job_row, make_job, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 90.0
#: Steps of a job still running when the database goes away (over a second at 64x64).
LONG_STEPS = 300


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A Postgres of this test alone (its data folder and a migrated database's URL)."""
    with temporary_postgres("onnx-web-test-outage-pg-") as (server, admin_url):
        url = create_database(admin_url, "outage")
        upgrade_head(url)
        yield server.datadir, url


@pytest.fixture
def own_s3() -> Iterator[Callable[[], EmbeddedS3]]:
    """Starts an S3 server of this test alone, always on the same folder and port."""
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-test-outage-s3-"))
    port = free_port(also_free=(10000,))
    servers: list[EmbeddedS3] = []

    def start() -> EmbeddedS3:
        server = EmbeddedS3(folder, port=port)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_job(engine: sqlalchemy.Engine, name: str, *states: str) -> dict[str, object]:
    def reached() -> dict[str, object] | None:
        row = job_row(engine, name)
        return row if row["state"] in states else None

    return wait_until(reached, timeout_s=DEADLINE_S, what=f"job {name[:16]}… to be {'/'.join(states)}")


def test_a_worker_waits_out_a_postgres_outage_and_carries_on(
    own_postgres: tuple[Path, str],
    s3_credentials: S3Credentials,
    bucket_name: str,
    models: Path,
    tmp_path: Path,
) -> None:
    datadir, url = own_postgres
    engine = make_engine(url)
    jobs = JobStore(engine, lease_s=FAST.lease_s, affinity_window_s=30.0)
    workers = Workers(
        database_url=url, s3=s3_credentials, bucket=bucket_name, models=models, log_dir=tmp_path
    )
    try:
        worker = workers.start("outage-pg")
        worker.wait_started()
        warm_up = make_job(models, steps=2)
        jobs.enqueue(warm_up)
        wait_for_job(engine, warm_up.name, "success")
        in_flight = make_job(models, steps=LONG_STEPS)
        jobs.enqueue(in_flight)
        wait_for_job(engine, in_flight.name, "running")

        pg_stop(datadir)
        engine.dispose()
        wait_until(
            lambda: worker.log_entries(action="dependency_wait", dependency="postgres")[3:],
            timeout_s=DEADLINE_S,
            what="four waits for postgres",
        )
        assert worker.poll() is None, worker.tail()
        pg_start(datadir)

        worker.wait_for_log(timeout_s=DEADLINE_S, action="dependency_back", dependency="postgres")
        row = wait_for_job(engine, in_flight.name, "success")
        assert row["attempt"] in (1, 2)  # committed once the database was back, or rescued and run again
        after = make_job(models, steps=2, seed=8)
        jobs.enqueue(after)
        wait_for_job(engine, after.name, "success")
        assert worker.poll() is None, "the worker must keep its process through the outage"
        waits = worker.log_entries(action="dependency_wait", dependency="postgres")
        assert all(entry["level"] == "warning" and "exc" not in entry for entry in waits)
        assert waits[0]["wait_s"] < waits[3]["wait_s"] <= OUTAGE_WAIT_MAX_S + 1  # backing off
    finally:
        workers.kill_all()
        engine.dispose()


def test_a_worker_waits_out_an_s3_outage_without_spending_the_attempts_of_jobs(
    database_url: str,
    engine: sqlalchemy.Engine,
    job_store: JobStore,
    own_s3: Callable[[], EmbeddedS3],
    models: Path,
    tmp_path: Path,
) -> None:
    s3 = own_s3()
    assert s3.credentials is not None
    workers = Workers(
        database_url=database_url, s3=s3.credentials, bucket="outage", models=models, log_dir=tmp_path
    )
    try:
        worker = workers.start("outage-s3")
        worker.wait_started()
        warm_up = make_job(models, steps=1)
        job_store.enqueue(warm_up)
        wait_for_job(engine, warm_up.name, "success")

        s3.stop()
        job = make_job(models, steps=2, seed=9, max_attempts=2)
        job_store.enqueue(job)
        wait_until(
            lambda: worker.log_entries(action="dependency_wait", dependency="s3")[1:],
            timeout_s=DEADLINE_S,
            what="two waits for s3",
        )
        row = job_row(engine, job.name)
        assert (row["state"], row["attempt"]) == ("pending", 1), "one attempt spent, then the worker waits"
        own_s3()

        worker.wait_for_log(timeout_s=DEADLINE_S, action="dependency_back", dependency="s3")
        row = wait_for_job(engine, job.name, "success", "failed")
        assert (row["state"], row["attempt"]) == ("success", 2)
        assert worker.poll() is None, "the worker must keep its process through the outage"
    finally:
        workers.kill_all()

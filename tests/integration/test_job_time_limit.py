"""A job's time limit (``ONNX_WEB_JOB_TIMEOUT_S``): a job that generates too long fails as ``timeout``
at its next check, and one stuck where no check comes is ended by its lease thread, with the worker.

spec/reliability.md P6: a failure a retry would repeat ends the job on its first attempt. Real
Postgres; the first test runs the demo model in an in-process worker, the others hold a claimed job
through ``JobRunner`` as the worker does, with the worker's exit replaced by a flag.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy

from pipelines.context import Progress
from service.config import Config
from service.jobrun import JobRunner, JobTimedOut
from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, JobStore
from service.resources.jobs import FAILURE_MESSAGES
from service.storage import MemoryObjectStore
from tests.fixtures.postgres import new_job
from tests.integration.workers import job_row, make_job, run_worker_in_process, wait_until

pytestmark = [pytest.mark.integration]


def test_a_job_past_its_time_limit_fails_as_timeout_at_its_next_check_and_is_not_retried(
    database_url: str, engine: sqlalchemy.Engine, job_store: JobStore, models: Path
) -> None:
    job = make_job(models, steps=30, max_attempts=3)
    job_store.enqueue(job)

    # Loading the model alone takes longer than the limit: the first step's check is past it.
    run_worker_in_process(
        database_url, job_store, MemoryObjectStore(), models, worker_id="w", max_jobs=1, job_timeout_s=0.01
    )

    row = job_row(engine, job.name)
    assert (row["state"], row["reason"], row["attempt"]) == (JobState.FAILED, "timeout", 1)
    assert "time limit of 0.01 s" in row["errors"][0]["message"]
    assert "time limit" in FAILURE_MESSAGES["timeout"]
    assert job_store.claim("w2", platform="cpu", held_models=()) is None


def runner_for(job_store: JobStore, **settings: float) -> tuple[JobRunner, threading.Event]:
    """A runner as a worker's, on a fast clock; the flag is set where the worker would exit."""
    config = Config(worker_id="w1", heartbeat_s=0.05, lease_s=5.0, **settings)
    runner = JobRunner(config, job_store, MemoryObjectStore(), threading.Event())
    stuck = threading.Event()
    runner.on_stuck = stuck.set
    return runner, stuck


def claimed(job_store: JobStore, **fields: object) -> ClaimedJob:
    job_store.enqueue(new_job(**fields))
    job = job_store.claim("w1", platform="cpu", held_models=())
    assert job is not None
    return job


def test_a_job_stuck_where_no_check_comes_is_ended_as_timeout_and_then_the_worker(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    runner, stuck = runner_for(job_store, job_timeout_s=0.1, job_stuck_s=0.2)
    job = claimed(job_store, max_attempts=3)

    with runner.hold(job):
        # The job's thread is "in native code": it calls no check, so only the lease thread acts.
        assert stuck.wait(10)

    row = job_row(engine, job.name)
    assert (row["state"], row["reason"], row["attempt"]) == (JobState.FAILED, "timeout", 1)
    assert "stopped at no check" in row["errors"][0]["message"]


def test_a_job_that_finished_generating_is_not_held_to_the_limit_while_it_waits_to_be_stored(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    runner, stuck = runner_for(job_store, job_timeout_s=0.1, job_stuck_s=0.1)
    job = claimed(job_store)

    with runner.hold(job) as run:
        run.check()  # in time
        run.generated.set()  # the outputs wait for the output stage (an S3 outage, say)
        time.sleep(0.5)
        run.check()
    assert not stuck.is_set()
    assert job_row(engine, job.name)["state"] == JobState.RUNNING


def test_checks_within_the_limit_pass_and_the_first_after_it_raises(job_store: JobStore) -> None:
    runner, _ = runner_for(job_store, job_timeout_s=0.3, job_stuck_s=60.0)
    job = claimed(job_store)

    with runner.hold(job) as run:
        run.check()
        run.report(Progress())
        wait_until(lambda: time.monotonic() > run.deadline, timeout_s=5, what="the deadline")
        with pytest.raises(JobTimedOut, match=r"time limit of 0\.3 s"):
            run.check()


@pytest.mark.parametrize(("kind", "limit"), [("convert", 0.1), ("txt2img", 0.0)])
def test_conversions_and_a_limit_of_zero_have_no_deadline(
    job_store: JobStore, kind: str, limit: float
) -> None:
    runner, stuck = runner_for(job_store, job_timeout_s=limit, job_stuck_s=0.05)
    job = claimed(job_store, kind=kind)

    with runner.hold(job) as run:
        time.sleep(0.3)
        run.check()
    assert run.deadline == float("inf") and not stuck.is_set()

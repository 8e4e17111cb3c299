"""The api's ``LeaseRescuer``: a job whose only worker is gone does not read ``running`` forever.

Only workers used to rescue expired leases, so with the one worker crashed for good, frozen or
scaled to zero, its job stayed ``running`` at its last step while nothing ran it.
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy

from service.db import make_engine
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.rescue import LeaseRescuer
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, new_job
from tests.integration.test_queue import claim, expire

pytestmark = pytest.mark.integration


def test_the_api_puts_a_job_whose_worker_is_gone_back_in_the_queue(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store, "gone")
    job_store.progress(job.id, "gone", job.attempt, steps=(5, 26), stages=(0, 2), tiles=(0, 0))
    rescuer = LeaseRescuer(job_store, interval_s=60.0)

    rescuer.round()  # the lease is still good: nothing happens
    assert job_store.get_many([job.name])[job.name].state is JobState.RUNNING

    expire(engine, job.name)
    rescuer.round()

    view = job_store.get_many([job.name])[job.name]
    assert view.state is JobState.PENDING
    assert view.last_error == "rescued"  # the status record's retry.reason
    # Queued again, it has made no progress: the dead attempt's steps are not shown as its own.
    assert (view.steps, view.stages) == ((0, 26), (0, 2))


def test_a_database_outage_is_logged_when_it_starts_and_when_it_ends(
    job_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    away = JobStore(
        make_engine("postgresql://nobody:secret@127.0.0.1:1/onnx_web"),
        lease_s=TEST_LEASE_S,
        affinity_window_s=TEST_AFFINITY_WINDOW_S,
    )
    rescuer = LeaseRescuer(away, interval_s=60.0)

    with caplog.at_level(logging.INFO, logger="service.rescue"):
        for _ in range(3):
            rescuer.round()
        rescuer.jobs = job_store
        rescuer.round()
        rescuer.round()

    assert [record.getMessage() for record in caplog.records] == [
        "lease rescue failed",
        "lease rescue works again",
    ]

"""``onnx-web run`` tells a kernel OOM kill of a worker from other deaths, and ends its jobs ``oom``."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import sqlalchemy

from service.capacity import oom_kills
from service.jobs.store import JobStore
from service.stack import OomWatch
from tests.fixtures.postgres import job_row, new_job

pytestmark = pytest.mark.integration


class Counter:
    """A stand-in for the cgroup's ``oom_kill`` counter that the test moves."""

    def __init__(self) -> None:
        self.kills = 3

    def __call__(self) -> int:
        return self.kills


def held_job(job_store: JobStore) -> str:
    job = new_job(max_attempts=3)
    job_store.enqueue(job)
    assert job_store.claim("local-0", platform="cpu", held_models=()) is not None
    return job.name


def test_a_sigkill_that_raised_the_oom_counter_fails_the_workers_jobs_as_oom(
    job_store: JobStore, engine: sqlalchemy.Engine, database_url: str
) -> None:
    name = held_job(job_store)
    counter = Counter()
    watch = OomWatch("local-0", database_url, read_kills=counter)

    counter.kills += 1
    watch(-signal.SIGKILL)

    row = job_row(engine, name)
    assert (row["state"], row["reason"], row["attempt"]) == ("failed", "oom", 1)


@pytest.mark.parametrize(
    ("returncode", "raised"), [(-signal.SIGKILL, False), (1, True), (-signal.SIGSEGV, True)]
)
def test_other_deaths_leave_the_jobs_to_the_rescue(
    job_store: JobStore, engine: sqlalchemy.Engine, database_url: str, returncode: int, raised: bool
) -> None:
    name = held_job(job_store)
    counter = Counter()
    watch = OomWatch("local-0", database_url, read_kills=counter)

    counter.kills += int(raised)
    watch(returncode)

    assert job_row(engine, name)["state"] == "running"


def test_the_cgroup_counter_is_read_from_memory_events(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")

    assert oom_kills(events) == 2
    assert oom_kills(tmp_path / "absent") is None

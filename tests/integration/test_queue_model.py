"""A model-based test of the job lifecycle: random sequences of actors against a simple model.

Hypothesis drives submissions, claims, heartbeats, completions, failures, releases, cancels,
crashes (a worker vanishes; its handle lives on as a zombie that may wake up and commit) and
rescues after moving leases back in SQL. After every step the database must equal the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import sqlalchemy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, JobStore
from tests.fixtures.postgres import TEST_LEASE_S, new_job, shift_time

pytestmark = pytest.mark.integration

SLOTS = ("a", "b", "c")
#: Kept small so the whole integration suite stays within its time budget on 2 cores.
SETTINGS = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class ModelJob:
    """What the model believes about one job."""

    order: int
    max_attempts: int
    state: JobState = JobState.PENDING
    attempt: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    lease_expired: bool = False


@dataclass(frozen=True)
class Handle:
    """A worker's grip on one attempt: all it needs to write to the row."""

    worker: str
    job: ClaimedJob


class Lifecycle(RuleBasedStateMachine):
    """Workers in three slots; a crashed slot restarts under a new worker id."""

    def __init__(self, store: JobStore, engine: sqlalchemy.Engine) -> None:
        super().__init__()
        self.store = store
        self.engine = engine
        self.jobs: dict[str, ModelJob] = {}
        self.live: dict[str, Handle] = {}
        self.zombies: list[Handle] = []
        self.generation = dict.fromkeys(SLOTS, 0)
        self.finished: dict[str, JobState] = {}

    # -- helpers ----------------------------------------------------------------------------

    def holds(self, handle: Handle) -> bool:
        """Whether this handle's attempt is the one the row says is running."""
        job = self.jobs[handle.job.name]
        return (
            job.state == JobState.RUNNING
            and job.worker == handle.worker
            and job.attempt == handle.job.attempt
        )

    def requeue_or_end(self, job: ModelJob, *, out_of_attempts_state: JobState) -> JobState:
        """Where a running job goes when its attempt ends without success."""
        if job.cancel_requested:
            return JobState.CANCELLED
        if job.attempt < job.max_attempts:
            return JobState.PENDING
        return out_of_attempts_state

    def move(self, job: ModelJob, state: JobState) -> None:
        """Apply a transition to the model; the model itself never leaves a terminal state."""
        assert not job.state.terminal, f"the model moved a {job.state} job"
        job.state = state
        if state == JobState.PENDING:
            job.worker = None

    def pick(self, index: int, state: JobState | None = None) -> str | None:
        names = sorted((n for n, j in self.jobs.items() if state is None or j.state == state), key=self.order)
        return names[index % len(names)] if names else None

    def order(self, name: str) -> int:
        return self.jobs[name].order

    def take(self, index: int) -> Handle:
        """Remove and return one live handle: the worker is about to end its attempt."""
        return self.live.pop(sorted(self.live)[index % len(self.live)])

    # -- rules ------------------------------------------------------------------------------

    @rule(max_attempts=st.integers(1, 3))
    def submit(self, max_attempts: int) -> None:
        spec = new_job(max_attempts=max_attempts)
        self.store.enqueue(spec)
        self.jobs[spec.name] = ModelJob(order=len(self.jobs), max_attempts=max_attempts)

    @precondition(lambda self: len(self.live) < len(SLOTS))
    @rule(index=st.integers(0, 100))
    def claim(self, index: int) -> None:
        idle = [slot for slot in SLOTS if slot not in self.live]
        slot = idle[index % len(idle)]
        worker = f"{slot}.{self.generation[slot]}"
        claimed = self.store.claim(worker, platform="cpu", held_models=())
        pending = [name for name, job in self.jobs.items() if job.state == JobState.PENDING]
        if not pending:
            assert claimed is None
            return
        assert claimed is not None and claimed.name == min(pending, key=self.order)
        job = self.jobs[claimed.name]
        job.state, job.attempt, job.worker, job.lease_expired = (
            JobState.RUNNING,
            job.attempt + 1,
            worker,
            False,
        )
        assert claimed.attempt == job.attempt
        self.live[slot] = Handle(worker, claimed)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def heartbeat(self, index: int) -> None:
        slot = sorted(self.live)[index % len(self.live)]
        handle = self.live[slot]
        beat = self.store.heartbeat(handle.job.id, handle.worker, handle.job.attempt)
        assert beat.owned == self.holds(handle)
        if beat.owned:
            job = self.jobs[handle.job.name]
            assert beat.cancel_requested == job.cancel_requested
            job.lease_expired = False
        else:
            del self.live[slot]  # the worker stops and discards its work

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def complete(self, index: int) -> None:
        self.commit(self.take(index))

    @precondition(lambda self: self.zombies)
    @rule(index=st.integers(0, 100))
    def zombie_wakes_and_commits(self, index: int) -> None:
        self.commit(self.zombies.pop(index % len(self.zombies)))

    def commit(self, handle: Handle) -> None:
        job = self.jobs[handle.job.name]
        expected = None
        if self.holds(handle):
            # A cancel requested before the commit wins: the outputs are never recorded.
            expected = JobState.CANCELLED if job.cancel_requested else JobState.SUCCESS
        name = f"{handle.job.name}_0.png"
        state = self.store.finish_success(
            handle.job.id,
            handle.worker,
            handle.job.attempt,
            outputs=[name],
            thumbnails=[],
            metadata=[{}],
            output_keys={name: f"{handle.job.attempt}/{name}"},
            steps=(1, 1),
            stages=(1, 1),
            tiles=(0, 0),
        )
        assert state == expected
        if expected is not None:
            self.move(job, expected)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), retryable=st.booleans())
    def fail(self, index: int, retryable: bool) -> None:
        handle = self.take(index)
        job = self.jobs[handle.job.name]
        expected = None
        if self.holds(handle):
            expected = (
                self.requeue_or_end(job, out_of_attempts_state=JobState.FAILED)
                if retryable
                else JobState.FAILED
            )
        state = self.store.finish_failed(
            handle.job.id,
            handle.worker,
            handle.job.attempt,
            reason="error",
            message="boom",
            retryable=retryable,
        )
        assert state == expected
        if expected is not None:
            self.move(job, expected)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def release(self, index: int) -> None:
        handle = self.take(index)
        job = self.jobs[handle.job.name]
        expected = self.holds(handle)
        assert self.store.release(handle.job.id, handle.worker, handle.job.attempt) == expected
        if expected:
            if job.cancel_requested:
                self.move(job, JobState.CANCELLED)
            else:
                job.attempt -= 1
                self.move(job, JobState.PENDING)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def stop_for_cancel(self, index: int) -> None:
        handle = self.take(index)
        job = self.jobs[handle.job.name]
        expected = self.holds(handle) and job.cancel_requested
        assert self.store.finish_cancelled(handle.job.id, handle.worker, handle.job.attempt) == expected
        if expected:
            self.move(job, JobState.CANCELLED)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), new_id=st.booleans())
    def crash(self, index: int, new_id: bool) -> None:
        """The worker vanishes; its replacement may reuse the id (a restarted container keeps its
        hostname)."""
        slot = sorted(self.live)[index % len(self.live)]
        self.zombies.append(self.live.pop(slot))
        self.generation[slot] += new_id

    @rule(index=st.integers(0, 100))
    def let_lease_expire(self, index: int) -> None:
        name = self.pick(index, JobState.RUNNING)
        if name is not None:
            shift_time(self.engine, name, column="lease_expires_at", seconds=TEST_LEASE_S + 1)
            self.jobs[name].lease_expired = True

    @rule()
    def rescue(self) -> None:
        rescued = {item.name: item.state for item in self.store.rescue_expired()}
        expected = {}
        for name, job in self.jobs.items():
            if job.state == JobState.RUNNING and job.lease_expired:
                expected[name] = self.requeue_or_end(job, out_of_attempts_state=JobState.FAILED)
                self.move(job, expected[name])
        assert rescued == expected

    @rule(index=st.integers(0, 100))
    def cancel(self, index: int) -> None:
        name = self.pick(index)
        if name is None:
            return
        job = self.jobs[name]
        if job.state == JobState.PENDING:
            self.move(job, JobState.CANCELLED)
        elif job.state == JobState.RUNNING:
            job.cancel_requested = True
        assert self.store.cancel(name) == job.state

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT name, state, attempt, max_attempts, worker_id, cancel_requested, outputs "
                    "FROM jobs"
                )
            ).all()
        assert {row.name for row in rows} == set(self.jobs)
        for row in rows:
            job = self.jobs[row.name]
            assert (row.state, row.attempt, row.cancel_requested) == (
                job.state,
                job.attempt,
                job.cancel_requested,
            )
            assert row.attempt <= row.max_attempts
            if job.state == JobState.RUNNING:
                assert row.worker_id == job.worker
            if job.state == JobState.SUCCESS:
                assert row.outputs is not None
            if job.state == JobState.CANCELLED:
                assert row.outputs is None
            if job.state.terminal:
                assert self.finished.setdefault(row.name, job.state) == job.state, "a terminal state changed"

    @invariant()
    def at_most_one_attempt_can_commit(self) -> None:
        handles = [*self.live.values(), *self.zombies]
        for name in self.jobs:
            assert sum(self.holds(handle) for handle in handles if handle.job.name == name) <= 1

    def teardown(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.text("TRUNCATE jobs CASCADE"))


def test_lifecycle_matches_the_model(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    run_state_machine_as_test(lambda: Lifecycle(job_store, engine), settings=SETTINGS)

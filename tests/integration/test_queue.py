"""JobStore on a real Postgres: the lifecycle, fencing, rescue, cancellation, ordering, wake-ups."""

from __future__ import annotations

import ast
import threading
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event

from service.config import Config
from service.errors import IdempotencyConflict
from service.jobs import callbacks as callbacks_module
from service.jobs import keys as keys_module
from service.jobs import store as store_module
from service.jobs.notify import EVENTS_CHANNEL, Notifier
from service.jobs.queries import QUERIES, parse_queries
from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, Heartbeat, JobStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, job_row, new_job, shift_time

pytestmark = pytest.mark.integration

CPU = {"platform": "cpu", "held_models": ()}


def claim(store: JobStore, worker: str = "w1", **options: Any) -> ClaimedJob:
    """Claim and insist that something was claimed."""
    job = store.claim(worker, **{**CPU, **options})
    assert job is not None
    return job


def succeed(store: JobStore, job: ClaimedJob, worker: str = "w1", tag: str = "") -> JobState | None:
    """Commit one output named after the attempt (and ``tag``), as a worker would; the new state."""
    name = f"{job.name}_0.png"
    return store.finish_success(
        job.id,
        worker,
        job.attempt,
        outputs=[name],
        thumbnails=None,
        metadata=[{"attempt": job.attempt}],
        output_keys={name: f"outputs/{job.name}/{job.attempt}{tag}/{name}"},
        steps=(25, 25),
        stages=(1, 1),
        tiles=(0, 0),
    )


def expire(engine: sqlalchemy.Engine, name: str) -> None:
    """Make a running job's lease run out, as if its worker stopped heartbeating a while ago."""
    shift_time(engine, name, column="lease_expires_at", seconds=TEST_LEASE_S + 1)


# -- the named queries ------------------------------------------------------------------------


def test_every_named_query_is_used_and_every_use_exists() -> None:
    used, other_uses = set(), []
    for module in (store_module, keys_module, callbacks_module):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        subscripted = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "QUERIES"
            ):
                assert isinstance(node.slice, ast.Constant), "QUERIES must be indexed by a literal name"
                used.add(node.slice.value)
                subscripted.add(id(node.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "QUERIES" and id(node) not in subscripted:
                other_uses.append(f"{module.__name__}:{node.lineno}")
    assert other_uses == [], f"QUERIES used other than as QUERIES['name'] at {other_uses}"
    assert used == set(QUERIES)


def test_the_query_file_demands_a_description_for_each_statement() -> None:
    with pytest.raises(ValueError, match="header"):
        parse_queries("-- name: orphan\nSELECT 1;\n")
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\n-- one\nSELECT 1;\n-- name: a\n-- two\nSELECT 2;\n")
    assert parse_queries("-- name: a\n-- Say one.\nSELECT 1;\n") == {"a": "SELECT 1"}


# -- submission and reading -------------------------------------------------------------------


def test_enqueue_stores_a_pending_job_with_its_position(job_store: JobStore) -> None:
    first = job_store.enqueue(new_job())
    second = job_store.enqueue(new_job(steps_total=30, stages_total=2))

    assert (first.state, first.queue_position, first.queue_total) == (JobState.PENDING, 0, 1)
    assert (second.queue_position, second.queue_total) == (1, 2)
    assert (second.steps, second.stages, second.tiles) == ((0, 30), (0, 2), (0, 0))
    assert second.attempt == 0 and second.outputs is None and second.started_at is None


def test_queue_positions_are_zero_based_in_claim_order(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    old = job_store.enqueue(new_job())
    new = job_store.enqueue(new_job())
    urgent = job_store.enqueue(new_job(priority=5))
    running = job_store.enqueue(new_job(priority=9))
    claim(job_store)  # takes the priority 9 job
    shift_time(engine, old.name, column="created_at", seconds=60)

    views = job_store.get_many([old.name, new.name, urgent.name, running.name, "unknown"])

    assert {name: view.queue_position for name, view in views.items()} == {
        urgent.name: 0,
        old.name: 1,
        new.name: 2,
        running.name: None,
    }
    assert {view.queue_total for view in views.values()} == {3}
    assert claim(job_store).name == urgent.name and claim(job_store).name == old.name


def test_the_queue_is_counted_only_when_a_job_asked_about_is_pending(job_store: JobStore) -> None:
    running = job_store.enqueue(new_job(priority=9))
    waiting = [job_store.enqueue(new_job()) for _ in range(3)]
    claim(job_store)

    alone = job_store.get_many([running.name])[running.name]
    together = job_store.get_many([running.name, waiting[2].name])

    assert (alone.state, alone.queue_position, alone.queue_total) == (JobState.RUNNING, None, 0)
    assert together[waiting[2].name].queue_position == 2
    assert {view.queue_total for view in together.values()} == {3}


def test_queue_positions_of_jobs_submitted_at_one_instant_follow_the_claims_tie_break(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    names = [job_store.enqueue(new_job()).name for _ in range(4)]
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE jobs SET created_at = '2026-01-01T00:00:00Z'"))

    positions = {name: view.queue_position for name, view in job_store.get_many(names).items()}

    assert sorted(positions.values()) == [0, 1, 2, 3]
    assert [claim(job_store).name for _ in names] == sorted(names, key=positions.__getitem__)


def test_get_many_is_one_round_trip(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    names = [job_store.enqueue(new_job()).name for _ in range(10)]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    assert len(job_store.get_many(names)) == 10
    assert len(statements) == 1


def test_resubmitting_with_the_same_key_and_body_returns_the_job_even_after_it_finished(
    job_store: JobStore,
) -> None:
    original = job_store.enqueue(new_job(idempotency_key="k", request_hash="h"))
    job = claim(job_store)
    assert succeed(job_store, job)

    again = job_store.enqueue(new_job(idempotency_key="k", request_hash="h"))

    assert (again.id, again.state) == (original.id, JobState.SUCCESS)
    with pytest.raises(IdempotencyConflict):
        job_store.enqueue(new_job(idempotency_key="k", request_hash="other body"))
    # Keys are per owner: another owner's identical key is another job.
    assert job_store.enqueue(new_job(owner="bob", idempotency_key="k", request_hash="h")).id != original.id


def test_a_taken_name_is_the_same_job_only_for_the_same_owner_and_body(job_store: JobStore) -> None:
    original = job_store.enqueue(new_job(request_hash="h"))

    assert job_store.enqueue(new_job(name=original.name, request_hash="h")).id == original.id
    with pytest.raises(IdempotencyConflict, match="taken"):
        job_store.enqueue(new_job(name=original.name, owner="bob", request_hash="h"))


# -- claiming order ---------------------------------------------------------------------------


def test_claim_takes_higher_priority_first_then_the_oldest(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    low_old = job_store.enqueue(new_job(priority=0))
    high = job_store.enqueue(new_job(priority=1))
    low_new = job_store.enqueue(new_job(priority=0))
    shift_time(engine, low_old.name, column="created_at", seconds=5)

    assert [claim(job_store).name for _ in range(3)] == [high.name, low_old.name, low_new.name]
    assert job_store.claim("w1", **CPU) is None


def test_claim_prefers_a_held_model_within_the_affinity_window(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    other = job_store.enqueue(new_job(model="other"))
    held = job_store.enqueue(new_job(model="held"))
    shift_time(engine, other.name, column="created_at", seconds=TEST_AFFINITY_WINDOW_S / 2)

    assert claim(job_store, held_models=["held"]).name == held.name
    assert claim(job_store, held_models=["held"]).name == other.name


def test_a_job_past_the_affinity_window_is_never_passed_over(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    starving = job_store.enqueue(new_job(model="other"))
    job_store.enqueue(new_job(model="held"))
    shift_time(engine, starving.name, column="created_at", seconds=TEST_AFFINITY_WINDOW_S + 1)

    assert claim(job_store, held_models=["held"]).name == starving.name


def test_priority_outranks_affinity(job_store: JobStore) -> None:
    urgent = job_store.enqueue(new_job(model="other", priority=1))
    job_store.enqueue(new_job(model="held"))

    assert claim(job_store, held_models=["held"]).name == urgent.name


def test_claim_respects_the_platform(job_store: JobStore) -> None:
    gpu_only = job_store.enqueue(new_job(platform="cuda"))
    anywhere = job_store.enqueue(new_job(platform=None))

    assert claim(job_store, platform="cpu").name == anywhere.name
    assert job_store.claim("w1", platform="cpu", held_models=()) is None
    assert claim(job_store, platform="cuda").name == gpu_only.name


def test_claim_starts_an_attempt_with_a_lease(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    submitted = job_store.enqueue(new_job(inputs={"source": "inputs/x/source.png"}))

    job = claim(job_store, "gpu-7")

    assert (job.id, job.attempt, job.max_attempts, job.inputs) == (
        submitted.id,
        1,
        3,
        {"source": "inputs/x/source.png"},
    )
    assert job.chain == new_job().chain
    row = job_row(engine, job.name)
    assert (row["state"], row["worker_id"]) == ("running", "gpu-7")
    lease = row["lease_expires_at"] - row["started_at"]
    assert timedelta(seconds=TEST_LEASE_S - 1) < lease <= timedelta(seconds=TEST_LEASE_S)


# -- heartbeats, progress, fencing ------------------------------------------------------------


def test_heartbeat_renews_the_lease_of_the_live_attempt_only(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    shift_time(engine, job.name, column="lease_expires_at", seconds=TEST_LEASE_S - 1)

    assert job_store.heartbeat(job.id, "w1", job.attempt).owned
    assert job_store.rescue_expired() == []
    assert not job_store.heartbeat(job.id, "w2", job.attempt).owned
    assert not job_store.heartbeat(job.id, "w1", job.attempt + 1).owned


def test_progress_is_recorded_for_the_live_attempt_only(job_store: JobStore) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)

    assert job_store.progress(job.id, "w1", job.attempt, (7, 25), (0, 2), (3, 4)).owned
    assert not job_store.progress(job.id, "w1", job.attempt + 1, (9, 25), (0, 2), (3, 4)).owned

    view = job_store.get_many([job.name])[job.name]
    assert (view.steps, view.stages, view.tiles) == ((7, 25), (0, 2), (3, 4))


def test_a_rescued_attempt_cannot_commit(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    job_store.enqueue(new_job())
    zombie = claim(job_store, "w1")
    expire(engine, zombie.name)
    job_store.rescue_expired()
    # The same worker id again: a restarted container keeps its hostname, so only the attempt fences.
    live = claim(job_store, "w1")

    assert not succeed(job_store, zombie, "w1"), "the stale attempt committed over a running one"
    assert succeed(job_store, live, "w1")
    assert not succeed(job_store, zombie, "w1"), "the stale attempt committed over a finished one"
    assert not job_store.heartbeat(zombie.id, "w1", zombie.attempt).owned

    view = job_store.get_many([live.name])[live.name]
    assert (view.state, view.attempt) == (JobState.SUCCESS, 2)
    assert view.output_keys == {f"{live.name}_0.png": f"outputs/{live.name}/2/{live.name}_0.png"}
    assert view.metadata == ({"attempt": 2},)


def test_an_expired_lease_still_commits_until_someone_rescues_it(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    expire(engine, job.name)

    assert succeed(job_store, job)
    assert job_store.rescue_expired() == []


# -- failures and retries ---------------------------------------------------------------------


def test_a_dead_workers_held_attempts_end_with_the_reason_its_supervisor_gives(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    held = [new_job(max_attempts=3) for _ in range(2)]
    for job in held:
        job_store.enqueue(job)
    claim(job_store)
    claim(job_store)
    other = new_job()
    job_store.enqueue(other)
    assert job_store.claim("w2", **CPU) is not None

    failed = job_store.fail_held("w1", reason="oom", message="killed by the kernel's OOM killer")

    assert sorted(failed) == sorted(job.name for job in held)
    for job in held:
        row = job_row(engine, job.name)
        assert (row["state"], row["reason"], row["attempt"]) == (JobState.FAILED, "oom", 1)
    assert job_row(engine, other.name)["state"] == JobState.RUNNING


def test_retryable_failures_requeue_until_the_last_attempt(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    job_store.enqueue(new_job(max_attempts=3))
    outcomes = []
    for attempt in (1, 2, 3):
        job = claim(job_store)
        assert job.attempt == attempt
        outcomes.append(
            job_store.finish_failed(job.id, "w1", job.attempt, reason="oom", message="OOM", retryable=True)
        )

    assert outcomes == [JobState.PENDING, JobState.PENDING, JobState.FAILED]
    assert job_store.claim("w1", **CPU) is None
    row = job_row(engine, job.name)
    assert (row["reason"], row["attempt"], row["finished_at"] is not None) == ("oom", 3, True)
    assert [(entry["attempt"], entry["reason"], entry["worker"]) for entry in row["errors"]] == [
        (1, "oom", "w1"),
        (2, "oom", "w1"),
        (3, "oom", "w1"),
    ]


def test_a_permanent_failure_ends_the_job_at_once(job_store: JobStore) -> None:
    job_store.enqueue(new_job(max_attempts=3))
    job = claim(job_store)

    assert (
        job_store.finish_failed(job.id, "w1", 1, reason="error", message="bad", retryable=False)
        == JobState.FAILED
    )
    assert job_store.finish_failed(job.id, "w1", 1, reason="error", message="again", retryable=False) is None


def test_release_hands_the_job_back_without_spending_an_attempt(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    job_store.enqueue(new_job(max_attempts=1))
    for _ in range(3):
        job = claim(job_store)
        assert job.attempt == 1
        assert job_store.release(job.id, "w1", job.attempt)
        assert not job_store.release(job.id, "w1", job.attempt)

    row = job_row(engine, job.name)
    assert (row["state"], row["attempt"], row["errors"], row["worker_id"]) == ("pending", 0, [], None)


# -- cancellation -----------------------------------------------------------------------------


def test_cancelling_a_pending_job_ends_it_at_once(job_store: JobStore) -> None:
    job = job_store.enqueue(new_job())

    assert job_store.cancel(job.name) == JobState.CANCELLED
    assert job_store.claim("w1", **CPU) is None
    view = job_store.get_many([job.name])[job.name]
    assert (view.state, view.reason, view.finished_at is not None) == (JobState.CANCELLED, "cancelled", True)
    assert job_store.cancel("no-such-job") is None


def test_cancelling_a_running_job_waits_for_its_worker(job_store: JobStore) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)

    assert not job_store.finish_cancelled(job.id, "w1", job.attempt), "cancelled without a request"
    assert job_store.cancel(job.name) == JobState.RUNNING
    assert job_store.heartbeat(job.id, "w1", job.attempt).cancel_requested
    assert job_store.finish_cancelled(job.id, "w1", job.attempt)
    assert job_store.cancel(job.name) == JobState.CANCELLED  # terminal: unchanged


def test_a_progress_write_passes_on_a_cancel_request(job_store: JobStore) -> None:
    """The worker writes progress up to 4 times a second: it learns of a cancel there, not only
    at its next heartbeat."""
    job_store.enqueue(new_job())
    job = claim(job_store)

    assert job_store.progress(job.id, "w1", job.attempt, (1, 25), (0, 1), (0, 0)) == Heartbeat(
        owned=True, cancel_requested=False
    )
    assert job_store.cancel(job.name) == JobState.RUNNING
    assert job_store.progress(job.id, "w1", job.attempt, (2, 25), (0, 1), (0, 0)) == Heartbeat(
        owned=True, cancel_requested=True
    )
    assert job_store.progress(job.id, "w1", job.attempt + 1, (3, 25), (0, 1), (0, 0)) == Heartbeat(
        owned=False, cancel_requested=False
    )


def test_a_commit_after_a_cancel_request_ends_the_job_cancelled_with_nothing_recorded(
    job_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    """The user was told the job would stop: work that finished after the request is not served."""
    job_store.enqueue(new_job())
    job = claim(job_store)
    assert job_store.cancel(job.name) == JobState.RUNNING

    assert succeed(job_store, job) == JobState.CANCELLED
    row = job_row(engine, job.name)
    assert (row["state"], row["reason"], row["attempt"]) == ("cancelled", "cancelled", 1)
    assert [row[column] for column in ("outputs", "thumbnails", "metadata", "output_keys")] == [None] * 4
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    assert job_store.recorded_output_key(job.name, f"{job.name}_0.png") is None
    assert succeed(job_store, job) is None, "a cancelled job is terminal"
    assert job_store.cancel(job.name) == JobState.CANCELLED


def test_cancelling_a_finished_job_changes_nothing(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    assert succeed(job_store, job)
    before = job_row(engine, job.name)

    assert job_store.cancel(job.name) == JobState.SUCCESS
    assert job_row(engine, job.name) == before


@pytest.mark.parametrize("end", ["retryable failure", "release"])
def test_a_cancel_request_is_never_requeued(job_store: JobStore, end: str) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    job_store.cancel(job.name)

    if end == "release":
        assert job_store.release(job.id, "w1", job.attempt)
    else:
        assert (
            job_store.finish_failed(job.id, "w1", 1, reason="error", message="x", retryable=True)
            == JobState.CANCELLED
        )
    assert job_store.get_many([job.name])[job.name].state == JobState.CANCELLED


# -- rescue -----------------------------------------------------------------------------------


def test_rescue_table(job_store: JobStore, engine: sqlalchemy.Engine) -> None:
    """River-style: one row per class around the lease horizon, one rescue pass, exact outcomes."""

    def running(max_attempts: int, *, attempts: int = 1) -> ClaimedJob:
        job_store.enqueue(spec := new_job(max_attempts=max_attempts))
        for _ in range(attempts - 1):
            job = claim(job_store)
            job_store.finish_failed(job.id, "w1", job.attempt, reason="error", message="x", retryable=True)
        job = claim(job_store)
        assert job.name == spec.name
        return job

    stale_under_max = running(3)
    expire(engine, stale_under_max.name)
    stale_at_max = running(2, attempts=2)
    expire(engine, stale_at_max.name)
    fresh = running(3)  # lease one second short of expiring
    shift_time(engine, fresh.name, column="lease_expires_at", seconds=TEST_LEASE_S - 1)
    finished = running(3)
    succeed(job_store, finished)
    cancel_requested = running(3)
    job_store.cancel(cancel_requested.name)
    expire(engine, cancel_requested.name)
    before = {job.name: job_row(engine, job.name) for job in (fresh, finished)}

    rescued = {item.name: (item.state, item.attempt, item.worker_id) for item in job_store.rescue_expired()}

    assert rescued == {
        stale_under_max.name: (JobState.PENDING, 1, "w1"),
        stale_at_max.name: (JobState.FAILED, 2, "w1"),
        cancel_requested.name: (JobState.CANCELLED, 1, "w1"),
    }
    under = job_row(engine, stale_under_max.name)
    assert (under["state"], under["rescue_count"], under["worker_id"], under["lease_expires_at"]) == (
        "pending",
        1,
        None,
        None,
    )
    assert [(entry["reason"], entry["attempt"], entry["worker"]) for entry in under["errors"]] == [
        ("rescued", 1, "w1")
    ]
    at_max = job_row(engine, stale_at_max.name)
    assert (at_max["state"], at_max["reason"], at_max["finished_at"] is not None) == (
        "failed",
        "rescued",
        True,
    )
    assert job_row(engine, cancel_requested.name)["state"] == "cancelled"
    assert {job.name: job_row(engine, job.name) for job in (fresh, finished)} == before
    assert job_store.rescue_expired() == []


# -- backoff between attempts -----------------------------------------------------------------

#: A backoff long enough that no test waits it out by accident: the clock is moved instead.
BACKOFF_S, BACKOFF_MAX_S = 60.0, 150.0


@pytest.fixture
def backing_off(engine: sqlalchemy.Engine) -> JobStore:
    """The queue with a backoff between attempts, set up from a ``Config`` as the worker's is."""
    config = Config(
        lease_s=TEST_LEASE_S,
        affinity_window_s=TEST_AFFINITY_WINDOW_S,
        retry_delay_s=BACKOFF_S,
        retry_delay_max_s=BACKOFF_MAX_S,
    )
    return JobStore.configured(engine, config)


def wait_s(engine: sqlalchemy.Engine, name: str) -> float | None:
    """How long job ``name`` still waits before a worker may claim it; None: not waiting."""
    with engine.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT EXTRACT(EPOCH FROM retry_at - now())::float FROM jobs WHERE name = :n"),
            {"n": name},
        ).scalar_one()


def due(engine: sqlalchemy.Engine, name: str) -> None:
    """Move a waiting job's retry time into the past, as if its backoff had passed."""
    shift_time(engine, name, column="retry_at", seconds=BACKOFF_MAX_S + 1)


def test_a_failed_attempt_waits_out_a_doubling_capped_backoff_while_later_jobs_run(
    backing_off: JobStore, engine: sqlalchemy.Engine
) -> None:
    failing = backing_off.enqueue(new_job(max_attempts=4))
    waits = []
    for attempt in (1, 2, 3):
        job = claim(backing_off)
        assert (job.name, job.attempt) == (failing.name, attempt)
        state = backing_off.finish_failed(job.id, "w1", attempt, reason="storage", message="", retryable=True)
        assert state == JobState.PENDING
        waits.append(wait_s(engine, failing.name))
        # Waiting, it is passed over: a job behind it runs, and then nothing is due.
        later = backing_off.enqueue(new_job())
        assert claim(backing_off).name == later.name
        assert backing_off.claim("w1", **CPU) is None
        due(engine, failing.name)

    # Half of each wait is random: 60 s, then 120 s, then 240 s capped at 150 s.
    for found, full in zip(waits, (BACKOFF_S, 2 * BACKOFF_S, BACKOFF_MAX_S), strict=True):
        assert found is not None and full / 2 - 1 <= found <= full, waits
    last = claim(backing_off)
    assert (last.name, last.attempt, wait_s(engine, failing.name)) == (failing.name, 4, None)
    assert backing_off.finish_failed(last.id, "w1", 4, reason="storage", message="x", retryable=True) == (
        JobState.FAILED
    )
    assert wait_s(engine, failing.name) is None


def test_jobs_failed_together_come_back_spread_out(backing_off: JobStore, engine: sqlalchemy.Engine) -> None:
    names = [backing_off.enqueue(new_job()).name for _ in range(12)]
    for _ in names:
        job = claim(backing_off)
        backing_off.finish_failed(job.id, "w1", 1, reason="storage", message="S3 away", retryable=True)

    waits = [wait_s(engine, name) for name in names]
    assert all(wait is not None and BACKOFF_S / 2 - 1 <= wait <= BACKOFF_S for wait in waits), waits
    # Twelve draws of a uniform jitter over 30 s: all within 3 s of each other has odds below 1e-8.
    assert max(waits) - min(waits) > 3.0  # type: ignore[operator]


def test_a_first_rescue_is_claimable_at_once_a_second_backs_off(
    backing_off: JobStore, engine: sqlalchemy.Engine
) -> None:
    job = backing_off.enqueue(new_job(max_attempts=3))
    waits = []
    for attempt in (1, 2):
        held = claim(backing_off)
        assert held.attempt == attempt
        expire(engine, job.name)
        assert [item.state for item in backing_off.rescue_expired()] == [JobState.PENDING]
        waits.append(wait_s(engine, job.name))

    assert waits[0] is None
    assert waits[1] is not None and BACKOFF_S / 2 - 1 <= waits[1] <= BACKOFF_S
    assert backing_off.claim("w1", **CPU) is None


def test_a_waiting_job_can_be_cancelled_and_a_released_one_does_not_wait(
    backing_off: JobStore, engine: sqlalchemy.Engine
) -> None:
    waiting = backing_off.enqueue(new_job())
    job = claim(backing_off)
    backing_off.finish_failed(job.id, "w1", 1, reason="error", message="x", retryable=True)
    assert backing_off.cancel(waiting.name) == JobState.CANCELLED
    assert job_row(engine, waiting.name)["retry_at"] is None

    handed_back = backing_off.enqueue(new_job())
    job = claim(backing_off)
    assert backing_off.release(job.id, "w1", job.attempt)
    assert claim(backing_off).name == handed_back.name


def test_a_waiting_job_shows_when_it_may_run_again(backing_off: JobStore, engine: sqlalchemy.Engine) -> None:
    spec = backing_off.enqueue(new_job(max_attempts=3))
    job = claim(backing_off)
    backing_off.finish_failed(job.id, "w1", 1, reason="storage", message="x", retryable=True)

    view = backing_off.get_many([spec.name])[spec.name]
    assert (view.state, view.attempt, view.max_attempts) == (JobState.PENDING, 1, 3)
    assert view.retry_at == job_row(engine, spec.name)["retry_at"]
    assert view.retry_at is not None and view.retry_at > view.created_at


# -- wake-ups ---------------------------------------------------------------------------------


def test_a_new_job_wakes_a_waiting_worker(job_store: JobStore, database_url: str) -> None:
    with closing(Notifier(database_url)) as notifier:
        assert not notifier.wait(0.05)
        woken: list[bool] = []
        waiter = threading.Thread(target=lambda: woken.append(notifier.wait(30)))
        waiter.start()
        started = time.monotonic()
        job_store.enqueue(new_job())
        waiter.join(10)
        assert woken == [True]
        assert time.monotonic() - started < 5


def test_a_requeued_job_wakes_a_waiting_worker(job_store: JobStore, database_url: str) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    with closing(Notifier(database_url)) as notifier:
        job_store.finish_failed(job.id, "w1", job.attempt, reason="oom", message="OOM", retryable=True)
        assert notifier.wait(10)


def heard(notifier: Notifier) -> list[str]:
    """Every payload that has arrived on the notifier's channel (waiting briefly for the first)."""
    return notifier.payloads(5)


def test_every_state_and_progress_change_notifies_the_job_name_after_it_commits(
    job_store: JobStore, engine: sqlalchemy.Engine, database_url: str
) -> None:
    with closing(Notifier(database_url, EVENTS_CHANNEL)) as events:
        first = job_store.enqueue(new_job())
        assert events.payloads(0.2) == []  # a new job has no listener yet: only idle workers hear it
        job = claim(job_store)
        assert heard(events) == [first.name]
        assert job_store.progress(job.id, "w1", job.attempt, (1, 3), (0, 1), (0, 0)).owned
        assert heard(events) == [first.name]
        assert succeed(job_store, job)
        assert heard(events) == [first.name]

        cancelled = job_store.enqueue(new_job())
        running = claim(job_store)
        heard(events)
        assert job_store.cancel(cancelled.name) == JobState.RUNNING
        assert heard(events) == [cancelled.name]
        assert job_store.cancel(first.name) == JobState.SUCCESS
        assert events.payloads(0.2) == []  # nothing changed: nothing to hear
        assert job_store.finish_cancelled(running.id, "w1", running.attempt)
        assert heard(events) == [cancelled.name]

        released = job_store.enqueue(new_job())
        held = claim(job_store)
        heard(events)
        assert job_store.release(held.id, "w1", held.attempt)
        assert heard(events) == [released.name]

        rescued = claim(job_store)
        heard(events)
        expire(engine, rescued.name)
        assert [job.name for job in job_store.rescue_expired()] == [released.name]
        assert heard(events) == [released.name]
        # A fenced write changes nothing and says nothing.
        assert not job_store.progress(rescued.id, "w1", rescued.attempt, (2, 3), (0, 1), (0, 0)).owned
        assert events.payloads(0.2) == []


def test_a_released_or_rescued_job_wakes_a_waiting_worker(
    job_store: JobStore, engine: sqlalchemy.Engine, database_url: str
) -> None:
    model = job_store.enqueue(new_job()).model
    with closing(Notifier(database_url)) as pending:
        assert pending.payloads(0.2) == []
        job = claim(job_store)
        assert job_store.release(job.id, "w1", job.attempt)
        assert heard(pending) == [model]
        job = claim(job_store)
        expire(engine, job.name)
        job_store.rescue_expired()
        assert heard(pending) == [model]


def test_a_failed_notification_does_not_undo_or_fail_the_committed_change(
    job_store: JobStore, engine: sqlalchemy.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_store.enqueue(new_job())
    job = claim(job_store)
    # The database refuses the notification (as during an outage right after the commit).
    monkeypatch.setitem(QUERIES, "notify", sqlalchemy.text("SELECT pg_notify_missing(:channels, :payloads)"))

    assert succeed(job_store, job)

    assert job_row(engine, job.name)["state"] == "success"


def test_interrupt_ends_a_wait_at_once(database_url: str) -> None:
    with closing(Notifier(database_url)) as notifier:
        threading.Timer(0.1, notifier.interrupt).start()
        started = time.monotonic()
        assert not notifier.wait(30)
        assert time.monotonic() - started < 2

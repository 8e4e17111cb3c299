"""Real workers die, hang, stop and lose S3; no job is lost and only one attempt's outputs are seen.

Every test runs ``python -m service.cli worker`` processes against a real Postgres, a real S3 server
(SeaweedFS) and the tiny demo models, with the clock shortened: lease 3 s, heartbeat 0.5 s, rescue
every 0.5 s, poll every 0.2 s (``workers.FAST``). Crashes come from ``ONNX_WEB_FAULT_POINT``
(``os._exit(137)``), zombies from SIGSTOP/SIGCONT, storage faults from a loopback proxy.
spec/reliability.md Q3, Q5, Q9 and S2; what the tests measure is printed after the module.

A worker's first job pays for importing diffusers and building ONNX sessions (seconds); the steps
themselves take milliseconds at 64x64. Where a second worker must finish a job, it warms up on a
job of its own meanwhile (``WARM_UP``), so the figures measure recovery, not imports.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import falcon.testing
import pytest
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import CPU_PROVIDER, SessionCache, SessionSettings
from service.app import create_app
from service.config import Config
from service.db import make_engine
from service.jobs.notify import Notifier
from service.jobs.states import JobState
from service.jobs.store import CounterPair, Heartbeat, JobStore, NewJob
from service.stack import S3Credentials
from service.storage import S3ObjectStore, output_prefix, parse_endpoint
from service.worker import Worker
from tests.fixtures.postgres import shift_time
from tests.integration.workers import (
    FAST,
    Bucket,
    SeveringProxy,
    Timings,
    WorkerProcess,
    Workers,
    decoded_outputs,
    job_row,
    make_job,
    run_worker_in_process,
    wait_until,
    worker_row_exists,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Long enough for anything a test waits on: a worker start, a lease, a rescue and a rerun.
DEADLINE_S = 90.0
#: What spec/reliability.md §6 allows a rescue: lease + rescue interval + 2 s.
RESCUE_BUDGET_S = FAST.lease_s + FAST.rescue_interval_s + 2.0
#: Steps of a job that must still be running when the test acts on it (over 1 s at 64x64).
LONG_STEPS = 300
#: Prefix of the platform of a worker that warms up first (``start_warm``).
WARM_UP = "warm-up"

FIGURES: dict[str, list[dict[str, Any]]] = {}


def record(section: str, **figures: Any) -> None:
    """Keep one row of measured figures for the summary printed after the module."""
    FIGURES.setdefault(section, []).append(figures)


@pytest.fixture(scope="module", autouse=True)
def print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what the tests measured (spec/reliability.md §6) once the module is done."""
    FIGURES.clear()
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None or not FIGURES:
        return
    # Outside pytest's capture: these lines are the report, on success as on failure.
    with capture.global_and_fixture_disabled():
        print()
        for section, rows in FIGURES.items():
            print(f"[{section}]")
            for row in rows:
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


@pytest.fixture
def workers(
    database_url: str,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    models: Path,
    tmp_path: Path,
) -> Iterator[Workers]:
    """Starts worker processes on this test's database and bucket; kills any left at the end."""
    started = Workers(
        database_url=database_url,
        s3=s3_credentials,
        bucket=object_store.bucket,
        models=models,
        log_dir=tmp_path,
    )
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture
def bucket(s3_credentials: S3Credentials, object_store: S3ObjectStore) -> Bucket:
    """Direct access to this test's bucket."""
    return Bucket(s3_credentials, object_store.bucket)


@pytest.fixture
def severing_proxy(s3_credentials: S3Credentials) -> Iterator[SeveringProxy]:
    """A fault proxy in front of the session's S3 server whose open connections can be cut."""
    upstream, secure = parse_endpoint(s3_credentials.endpoint)
    if secure:
        pytest.skip("a TCP proxy breaks TLS hostname checks; run storage fault tests against plain HTTP")
    proxy = SeveringProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


def wait_for_row(
    engine: sqlalchemy.Engine, name: str, what: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The job's row once ``check(row)`` holds."""

    def ready() -> dict[str, Any] | None:
        row = job_row(engine, name)
        return row if check(row) else None

    return wait_until(ready, timeout_s=DEADLINE_S, what=f"job {name[:16]}… {what}")


def wait_for_state(engine: sqlalchemy.Engine, name: str, *states: JobState) -> dict[str, Any]:
    """The job's row once it is in one of ``states``."""
    return wait_for_row(engine, name, f"to be {'/'.join(states)}", lambda row: row["state"] in states)


def wait_until_running(engine: sqlalchemy.Engine, name: str, worker: WorkerProcess) -> dict[str, Any]:
    """The row once ``worker`` runs the job and has reported a step (so it is mid-inference)."""
    return wait_for_row(
        engine,
        name,
        f"to run on {worker.worker_id}",
        lambda row: (
            row["state"] == JobState.RUNNING
            and row["worker_id"] == worker.worker_id
            and row["steps_current"] >= 1
        ),
    )


def start_warm(
    workers: Workers, job_store: JobStore, models: Path, worker_id: str, **options: Any
) -> tuple[WorkerProcess, str]:
    """A worker that loads its models on a warm-up job only it can claim; returns it and that job.

    The worker serves a platform of its own, which only its warm-up job asks for; jobs that ask for
    no platform (every test job) remain open to it.
    """
    platform = f"{WARM_UP}-{worker_id}"
    worker = workers.start(worker_id, ONNX_WEB_WORKER_PLATFORM=platform, **options)
    warm_up = make_job(models, steps=1, platform=platform)
    job_store.enqueue(warm_up)
    return worker, warm_up.name


def enqueue_past(rescuer: WorkerProcess, job_store: JobStore, engine: sqlalchemy.Engine, job: NewJob) -> None:
    """Enqueue ``job`` while ``rescuer`` is frozen, so that the worker under test is the one to claim it."""
    rescuer.send(signal.SIGSTOP)
    try:
        job_store.enqueue(job)
        wait_for_row(engine, job.name, "to be claimed", lambda row: row["attempt"] >= 1)
    finally:
        rescuer.send(signal.SIGCONT)


def assert_outputs_recorded_for(row: dict[str, Any], bucket: Bucket, attempt: int) -> None:
    """Every recorded key belongs to ``attempt``, exists in the bucket and decodes."""
    keys = row["output_keys"]
    assert keys, row
    prefix = output_prefix(row["name"], attempt)
    assert all(key.startswith(prefix) for key in keys.values()), keys
    expected = [*row["outputs"], *row["thumbnails"], *(f"{name}.json" for name in row["outputs"])]
    assert sorted(keys) == sorted(expected)
    for name, decoded in decoded_outputs(bucket, keys):
        if name.endswith(".json"):
            assert decoded["outputs"] == [name.removesuffix(".json")]
        else:
            assert decoded.size == (64, 64) or "thumbnail" in name


def unrecorded_objects(row: dict[str, Any], bucket: Bucket) -> list[str]:
    """Objects under the job's output prefix that the row does not record (orphans)."""
    recorded = set((row["output_keys"] or {}).values())
    return [key for key in bucket.keys(f"outputs/{row['name']}/") if key not in recorded]


def error_reasons(row: dict[str, Any]) -> list[str]:
    return [entry["reason"] for entry in row["errors"]]


# -- Q3: a crash at every point ------------------------------------------------------------------

#: fault point -> (steps of its job, attempt whose outputs end up recorded, orphans of attempt 1)
CRASH_POINTS = {
    "after_claim": (2, 2, 0),
    "mid_inference:1": (2, 2, 0),
    # The image, its sidecar and its thumbnail were written; nobody will ever record them.
    "after_put_before_commit": (2, 2, 3),
    "after_commit": (2, 1, 0),
    # The job must still be running when the first heartbeat fires (0.5 s after the claim).
    "during_heartbeat": (LONG_STEPS, 2, 0),
}


def test_a_worker_dying_at_any_point_loses_no_job_and_exposes_one_attempt(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, bucket: Bucket, models: Path
) -> None:
    """One victim per fault point, all at once; one rescuer finishes whatever they left."""
    # One job per victim: with the output stage on, a victim whose job uploads would claim the
    # next victim's job meanwhile and take it down too (test_worker_overlap covers that case).
    victims = {
        point: workers.start(
            f"victim-{point.split(':')[0]}", ONNX_WEB_FAULT_POINT=point, ONNX_WEB_UPLOAD_DEPTH="0"
        )
        for point in CRASH_POINTS
    }
    rescuer, _ = start_warm(workers, job_store, models, "rescuer")
    for worker in [*victims.values(), rescuer]:
        worker.wait_started()
    # Hand each victim its own job: every other worker is frozen while one claims. A later job has
    # a higher priority, so a job already rescued (should claims be slow) is never taken instead.
    for worker in [*victims.values(), rescuer]:
        worker.send(signal.SIGSTOP)
    jobs = {}
    for priority, (point, victim) in enumerate(victims.items()):
        jobs[point] = replace(
            make_job(models, steps=CRASH_POINTS[point][0], seed=priority), priority=priority
        )
        job_store.enqueue(jobs[point])
        victim.send(signal.SIGCONT)
        wait_for_row(
            engine, jobs[point].name, f"to be claimed by {victim.worker_id}", lambda row: row["attempt"] == 1
        )
    rescuer.send(signal.SIGCONT)

    # Every victim is polled in every round (no short-circuit), so each death time is exact.
    wait_until(
        lambda: all([victim.poll() is not None for victim in victims.values()]),
        timeout_s=DEADLINE_S,
        what="every victim to die",
        interval_s=0.01,
    )
    for point, victim in victims.items():
        assert victim.poll() == 137, f"{point}: {victim.tail()}"
        assert victim.log_entries(action="fault", point=point.split(":")[0]), point
    for point, job in jobs.items():
        _, recorded_attempt, orphans = CRASH_POINTS[point]
        row = wait_for_state(engine, job.name, JobState.SUCCESS, JobState.FAILED, JobState.CANCELLED)
        victim = victims[point]
        assert victim.exited_at is not None
        assert row["state"] == JobState.SUCCESS, (point, row)
        assert row["attempt"] == recorded_attempt, point
        assert row["worker_id"] == (victim.worker_id if recorded_attempt == 1 else rescuer.worker_id), point
        assert_outputs_recorded_for(row, bucket, recorded_attempt)
        stray = unrecorded_objects(row, bucket)
        assert len(stray) == orphans, (point, stray)
        assert all(key.startswith(output_prefix(job.name, 1)) for key in stray)
        rescue_s = None
        if recorded_attempt == 1:
            assert row["rescue_count"] == 0 and row["errors"] == [], point
        else:
            assert row["rescue_count"] == 1 and error_reasons(row) == ["rescued"], (point, row["errors"])
            assert row["errors"][0]["worker"] == victim.worker_id
            rescue_s = datetime.fromisoformat(row["errors"][0]["at"]).timestamp() - victim.exited_at
            assert rescue_s <= RESCUE_BUDGET_S, point
        record(
            "crash points (Q3)",
            point=point,
            state=row["state"],
            attempts=row["attempt"],
            recorded_attempt=recorded_attempt,
            orphans=len(stray),
            time_to_rescue_s=None if rescue_s is None else round(rescue_s, 2),
            death_to_success_s=round(row["finished_at"].timestamp() - victim.exited_at, 2),
        )


# -- Q5: a zombie's commit is fenced -------------------------------------------------------------

#: The zombie never learns it lost the job before it commits: no heartbeat or progress write is
#: due within the test (its lease is shortened in SQL instead of by waiting).
QUIET_S = 500.0
UNAWARE = Timings(lease_s=600.0, heartbeat_s=QUIET_S, progress_interval_s=QUIET_S)


@pytest.mark.parametrize("fence", ["heartbeat", "commit"])
def test_a_paused_worker_cannot_commit_over_its_rescuer(
    fence: str,
    workers: Workers,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    bucket: Bucket,
    object_store: S3ObjectStore,
    models: Path,
    tmp_path: Path,
) -> None:
    """``heartbeat``: the zombie notices at its next heartbeat; ``commit``: it hears nothing until its
    generation ends, and the write of its last counters tells it."""
    rescuer, _ = start_warm(workers, job_store, models, "rescuer")
    if fence == "heartbeat":
        zombie = workers.start("zombie")
    else:
        # Warm, so that after its pause it finishes in a second rather than loading its models then.
        zombie, warm_up = start_warm(workers, job_store, models, "zombie", timings=UNAWARE)
        wait_for_state(engine, warm_up, JobState.SUCCESS)
    zombie.wait_started()
    rescuer.wait_started()
    job = make_job(models, steps=LONG_STEPS)
    enqueue_past(rescuer, job_store, engine, job)
    if fence == "heartbeat":
        wait_until_running(engine, job.name, zombie)
    else:
        # Its one progress write (which moves heartbeat_at past the claim) must come before the
        # pause: a write after it would tell the zombie it lost the job before it commits.
        wait_for_row(
            engine, job.name, "to report progress once", lambda row: row["heartbeat_at"] > row["started_at"]
        )
    zombie.send(signal.SIGSTOP)
    stopped_at = time.time()
    if fence == "commit":
        shift_time(engine, job.name, column="lease_expires_at", seconds=2 * UNAWARE.lease_s)
    committed = wait_for_state(engine, job.name, JobState.SUCCESS)
    assert committed["attempt"] == 2 and committed["worker_id"] == "rescuer"

    zombie.send(signal.SIGCONT)
    summary = zombie.wait_for_log(action="job_summary", job=job.name, timeout_s=DEADLINE_S)
    assert summary["outcome"] == "fenced", summary
    assert summary["attempt"] == 1
    # Unaware through its generation, the zombie learns it lost the job from the progress write
    # that ends it, before uploading anything: no commit is tried (test_worker_overlap has the
    # refused commit of a worker that could not learn earlier).
    assert zombie.log_entries(action="fenced", job=job.name) == []
    assert job_row(engine, job.name) == committed, "the zombie changed the row"
    assert_outputs_recorded_for(committed, bucket, 2)
    assert unrecorded_objects(committed, bucket) == [], "the zombie left attempt 1's objects behind"

    client = falcon.testing.TestClient(
        create_app(
            Config(models_path=models, bundle_path=tmp_path / "bundle", s3_bucket=object_store.bucket),
            jobs=job_store,
            store=object_store,
            registry=ModelRegistry(models, ()),
        )
    )
    for name, key in committed["output_keys"].items():
        served = client.simulate_get(f"/output/{name}")
        assert served.status_code == 200, served.text
        assert served.content == bucket.read(key)
    zombie.send(signal.SIGTERM)
    assert zombie.wait_exit(DEADLINE_S) == 0
    record(
        "zombies (Q5)",
        fence=fence,
        final_attempt=committed["attempt"],
        fenced_commits=len(zombie.log_entries(action="fenced", job=job.name)),
        zombie_outcome=summary["outcome"],
        paused_to_rescuer_commit_s=round(committed["finished_at"].timestamp() - stopped_at, 2),
    )


# -- Q9: graceful shutdown -----------------------------------------------------------------------


def test_sigterm_finishes_the_running_job_claims_nothing_more_and_exits_0(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, bucket: Bucket, models: Path
) -> None:
    worker = workers.start("draining")
    worker.wait_started()
    current, queued = make_job(models, steps=LONG_STEPS), make_job(models, steps=2, seed=8)
    job_store.enqueue(current)
    job_store.enqueue(queued)
    wait_until_running(engine, current.name, worker)
    signalled = time.monotonic()
    worker.send(signal.SIGTERM)

    assert worker.wait_exit(DEADLINE_S) == 0, worker.tail()
    drain_s = time.monotonic() - signalled
    drain = worker.log_entries(action="drain")
    summary = worker.log_entries(action="job_summary")
    assert len(drain) == 1 and [entry["job"] for entry in summary] == [current.name]
    assert drain[0]["ts"] <= summary[0]["ts"], "the job had finished before the signal: nothing was drained"
    row = job_row(engine, current.name)
    assert row["state"] == JobState.SUCCESS and row["attempt"] == 1
    assert_outputs_recorded_for(row, bucket, 1)
    untouched = job_row(engine, queued.name)
    assert (
        untouched["state"] == JobState.PENDING
        and untouched["attempt"] == 0
        and untouched["worker_id"] is None
    )
    assert not running_rows_of(engine, "draining")
    assert not worker_row_exists(engine, "draining")
    record(
        "graceful shutdown (Q9)", case="first SIGTERM", drain_s=round(drain_s, 2), finished=1, handed_back=0
    )


def test_a_second_sigterm_hands_the_job_back_without_spending_its_attempt(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, bucket: Bucket, models: Path
) -> None:
    # The grace running out (ONNX_WEB_SHUTDOWN_GRACE_S) and a second signal take the same
    # release path; the second signal forces it without waiting.
    worker = workers.start("releasing")
    worker.wait_started()
    job = make_job(models, steps=LONG_STEPS)
    job_store.enqueue(job)
    wait_until_running(engine, job.name, worker)
    signalled = time.monotonic()
    worker.send(signal.SIGTERM)
    worker.wait_for_log(action="drain")
    worker.send(signal.SIGTERM)

    assert worker.wait_exit(DEADLINE_S) == 0, worker.tail()
    exit_s = time.monotonic() - signalled
    assert worker.log_entries(action="release")
    assert [entry["outcome"] for entry in worker.log_entries(action="job_summary")] == ["released"]
    row = job_row(engine, job.name)
    assert row["state"] == JobState.PENDING and row["attempt"] == 0, row
    assert row["worker_id"] is None and row["errors"] == [] and row["rescue_count"] == 0
    assert bucket.keys(f"outputs/{job.name}/") == []
    assert not running_rows_of(engine, "releasing")
    assert not worker_row_exists(engine, "releasing")
    record(
        "graceful shutdown (Q9)", case="second SIGTERM", drain_s=round(exit_s, 2), finished=0, handed_back=1
    )


def running_rows_of(engine: sqlalchemy.Engine, worker_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT name FROM jobs WHERE state = 'running' AND worker_id = :w"),
            {"w": worker_id},
        ).all()
    return [row.name for row in rows]


# -- cancellation --------------------------------------------------------------------------------


def test_cancelling_a_running_job_ends_it_cancelled_with_nothing_recorded_or_stored(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, bucket: Bucket, models: Path
) -> None:
    worker = workers.start("cancelled")
    worker.wait_started()
    job = make_job(models, steps=LONG_STEPS)
    job_store.enqueue(job)
    wait_until_running(engine, job.name, worker)
    # Stands for an upload this attempt had made: whatever is under its prefix must go.
    leftover = output_prefix(job.name, 1) + "partial.png"
    bucket.put(leftover, b"not an image")
    assert job_store.cancel(job.name) == JobState.RUNNING

    row = wait_for_state(engine, job.name, JobState.CANCELLED, JobState.SUCCESS, JobState.FAILED)
    assert row["state"] == JobState.CANCELLED and row["reason"] == "cancelled", row
    assert row["outputs"] is None and row["output_keys"] is None and row["attempt"] == 1
    summary = worker.wait_for_log(action="job_summary")
    assert summary["outcome"] == "cancelled"
    assert bucket.keys(f"outputs/{job.name}/") == []


class CancelsAtAWrite(JobStore):
    """A ``JobStore`` that asks to cancel ``victim`` just before one of the worker's writes: the
    progress write of step ``at_step``, or (``at_step`` None) the success commit. It keeps the step
    of every progress write."""

    def __init__(self, engine: sqlalchemy.Engine, victim: str, at_step: int | None) -> None:
        super().__init__(engine, lease_s=UNAWARE.lease_s, affinity_window_s=0.0)
        self.victim = victim
        self.at_step = at_step
        self.steps_written: list[int] = []

    def progress(
        self,
        job_id: UUID,
        worker_id: str,
        attempt: int,
        steps: CounterPair,
        stages: CounterPair,
        tiles: CounterPair,
    ) -> Heartbeat:
        if steps[0] == self.at_step:
            assert self.cancel(self.victim) == JobState.RUNNING
        self.steps_written.append(steps[0])
        return super().progress(job_id, worker_id, attempt, steps, stages, tiles)

    def finish_success(self, *args: Any, **kwargs: Any) -> JobState | None:
        if self.at_step is None:
            assert self.cancel(self.victim) == JobState.RUNNING
        return super().finish_success(*args, **kwargs)


def run_unaware_worker(database_url: str, jobs: JobStore, object_store: S3ObjectStore, models: Path) -> None:
    """One job in process, progress written on every step, and no heartbeat due meanwhile: a
    cancel request reaches the worker only through its progress writes and its commit."""
    run_worker_in_process(
        database_url,
        jobs,
        object_store,
        models,
        worker_id="in-process",
        max_jobs=1,
        lease_s=UNAWARE.lease_s,
        heartbeat_s=UNAWARE.heartbeat_s,
    )


def test_a_cancel_stops_the_job_right_after_the_progress_write_that_carried_it(
    database_url: str, engine: sqlalchemy.Engine, object_store: S3ObjectStore, bucket: Bucket, models: Path
) -> None:
    job = make_job(models, steps=20)
    jobs = CancelsAtAWrite(engine, job.name, at_step=3)
    jobs.enqueue(job)

    run_unaware_worker(database_url, jobs, object_store, models)

    row = job_row(engine, job.name)
    assert (row["state"], row["reason"], row["output_keys"]) == (JobState.CANCELLED, "cancelled", None), row
    assert max(jobs.steps_written) == 3, f"steps written after the cancel: {jobs.steps_written}"
    assert bucket.keys(f"outputs/{job.name}/") == []


def test_a_cancel_requested_after_the_last_step_ends_the_job_cancelled_not_success(
    database_url: str,
    engine: sqlalchemy.Engine,
    object_store: S3ObjectStore,
    bucket: Bucket,
    models: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outputs are stored and the commit is on its way when the user cancels: the job ends as
    the cancel's answer promised, and what it stored is deleted."""
    job = make_job(models, steps=2)
    jobs = CancelsAtAWrite(engine, job.name, at_step=None)
    jobs.enqueue(job)

    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        run_unaware_worker(database_url, jobs, object_store, models)

    row = job_row(engine, job.name)
    assert (row["state"], row["reason"], row["attempt"]) == (JobState.CANCELLED, "cancelled", 1), row
    assert (row["outputs"], row["output_keys"]) == (None, None)
    assert row["steps_current"] == row["steps_total"] == max(jobs.steps_written), "it stopped early"
    assert bucket.keys(f"outputs/{job.name}/") == []
    summaries = [record for record in caplog.records if getattr(record, "action", None) == "job_summary"]
    assert [getattr(record, "outcome", None) for record in summaries] == ["cancelled"]


# -- S2: storage faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "attempts"),
    [(["reset", "slowdown", "reset"], 1), (["reset"] * 5, 2)],
    ids=["within-the-store-retries", "beyond-the-store-retries"],
)
def test_s3_faults_during_upload_are_retried_and_the_job_succeeds(
    faults: list[Any],
    attempts: int,
    workers: Workers,
    severing_proxy: SeveringProxy,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    bucket: Bucket,
    models: Path,
) -> None:
    """The store retries 5 times; a sixth failure fails the attempt and the job runs again."""
    worker = workers.start("uploader", S3_ENDPOINT=severing_proxy.endpoint)
    worker.wait_started()
    for fault in faults:
        severing_proxy.inject(fault)
    # The worker's idle connection would carry the upload past the faults: cut it.
    assert severing_proxy.sever() >= 1
    job = make_job(models, steps=2)
    job_store.enqueue(job)

    row = wait_for_state(engine, job.name, JobState.SUCCESS, JobState.FAILED)
    assert row["state"] == JobState.SUCCESS and row["attempt"] == attempts, row
    assert error_reasons(row) == ["storage"] * (attempts - 1)
    assert_outputs_recorded_for(row, bucket, attempts)
    assert unrecorded_objects(row, bucket) == []
    retries = worker.log_entries(action="s3_retry")
    assert len(retries) >= len(faults) - (attempts - 1)
    record(
        "storage faults (S2)",
        case="+".join(faults),
        final_state=row["state"],
        attempts=row["attempt"],
        s3_retries=len(retries),
        orphans=0,
    )


def test_s3_down_longer_than_every_retry_ends_the_attempt_as_storage_and_the_worker_waits(
    workers: Workers,
    severing_proxy: SeveringProxy,
    job_store: JobStore,
    engine: sqlalchemy.Engine,
    bucket: Bucket,
    models: Path,
) -> None:
    """The attempt that could not store its outputs ends ``storage`` and hands the job back; the
    worker then waits for S3 instead of spending the job's other attempts on the same outage."""
    worker = workers.start("stranded", S3_ENDPOINT=severing_proxy.endpoint)
    worker.wait_started()
    severing_proxy.close()  # nothing listens there any more: every connection is refused
    job = make_job(models, steps=2, max_attempts=2)
    job_store.enqueue(job)

    row = wait_for_row(engine, job.name, "a storage error", lambda row: bool(row["errors"]))
    worker.wait_for_log(timeout_s=90, action="dependency_wait", dependency="s3")
    row = job_row(engine, job.name)
    assert (row["state"], row["attempt"], row["max_attempts"]) == (JobState.PENDING, 1, 2), row
    assert error_reasons(row) == ["storage"] and "StorageError" in row["errors"][0]["message"]
    assert row["output_keys"] is None
    assert bucket.keys(f"outputs/{job.name}/") == []
    assert worker.poll() is None, "the worker keeps its process through the outage"
    retries = worker.log_entries(action="s3_retry")
    record(
        "storage faults (S2)",
        case="s3 down",
        final_state=row["state"],
        attempts=row["attempt"],
        s3_retries=len(retries),
        orphans=0,
    )


# -- retry bookkeeping ---------------------------------------------------------------------------


def test_a_permanent_error_fails_the_job_at_once_without_retrying(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, models: Path
) -> None:
    job = make_job(models, steps=2)
    job.chain["stages"][0]["params"]["model"] = "no-such-model"
    worker = workers.start("unlucky")
    worker.wait_started()
    job_store.enqueue(job)

    row = wait_for_state(engine, job.name, JobState.SUCCESS, JobState.FAILED)
    # Neither the models folder nor the model store has it (service.modelstore): a retry cannot help.
    assert row["state"] == JobState.FAILED and row["reason"] == "model_missing", row
    assert row["attempt"] == 1 and row["max_attempts"] == 3
    assert error_reasons(row) == ["model_missing"]
    assert "ModelUnavailable: model 'no-such-model' is neither" in row["errors"][0]["message"]
    assert worker.log_entries(action="fail", retryable=False)


def test_running_out_of_memory_fails_the_job_as_oom_without_handing_it_on(
    workers: Workers, job_store: JobStore, engine: sqlalchemy.Engine, models: Path
) -> None:
    """A 1024x1024 txt2img on CPU needs tens of GB for attention; capped at 6 GB, the allocation
    fails as it does on a full device, and the next worker would fail the same way."""
    job = make_job(models, steps=2, size=1024)
    worker = workers.start("cramped", address_space=6 * 1024**3)
    worker.wait_started()
    job_store.enqueue(job)

    row = wait_for_state(engine, job.name, JobState.SUCCESS, JobState.FAILED)
    assert row["state"] == JobState.FAILED and row["reason"] == "oom", row
    assert row["attempt"] == 1 and error_reasons(row) == ["oom"]
    assert worker.log_entries(action="fail", reason="oom", retryable=False)
    assert worker.poll() is None, "the worker survives the failed allocation"


# -- a commit whose reply is lost ----------------------------------------------------------------


class CommitReplyLost(JobStore):
    """A ``JobStore`` whose first ``finish_success`` commits, then fails as a dropped connection does.

    psycopg raises ``OperationalError`` when the connection breaks after COMMIT was sent: the
    transaction may well have been applied. The worker's ``DB_RETRY`` then runs the commit again.
    """

    reply_lost = False

    def finish_success(self, *args: Any, **kwargs: Any) -> JobState | None:
        committed = super().finish_success(*args, **kwargs)
        if not self.reply_lost:
            self.reply_lost = True
            raise OperationalError(
                "COMMIT", {}, ConnectionResetError("server closed the connection unexpectedly")
            )
        return committed


def in_process_config(database_url: str, models: Path, object_store: S3ObjectStore) -> Config:
    """A worker run in the test's process, with the fast timings of the subprocess workers."""
    return Config(
        database_url=database_url,
        models_path=models,
        s3_bucket=object_store.bucket,
        worker_id="in-process",
        lease_s=FAST.lease_s,
        heartbeat_s=FAST.heartbeat_s,
        rescue_interval_s=FAST.rescue_interval_s,
        poll_interval_s=FAST.poll_interval_s,
        retry_delay_s=FAST.retry_delay_s,
    )


def test_a_commit_retried_after_its_reply_was_lost_keeps_the_recorded_outputs(
    database_url: str, engine: sqlalchemy.Engine, object_store: S3ObjectStore, bucket: Bucket, models: Path
) -> None:
    # In process: the only way to lose exactly the reply of one commit without a Postgres proxy.
    config = in_process_config(database_url, models, object_store)
    jobs = CommitReplyLost(engine, lease_s=config.lease_s, affinity_window_s=config.affinity_window_s)
    job = make_job(models, steps=2)
    jobs.enqueue(job)
    with closing(Notifier(database_url)) as notifier:
        worker = Worker(
            config,
            jobs=jobs,
            store=object_store,
            notifier=notifier,
            sessions=SessionCache(1, SessionSettings(providers=(CPU_PROVIDER,))),
        )
        worker.run(max_jobs=1)

    row = job_row(engine, job.name)
    assert jobs.reply_lost and row["state"] == JobState.SUCCESS and row["attempt"] == 1
    missing = [key for key in row["output_keys"].values() if key not in bucket.keys(f"outputs/{job.name}/")]
    assert missing == [], "the row records outputs that the worker deleted"


class CommitReplyLostThenAway(JobStore):
    """A ``JobStore`` whose ``finish_success`` commits, loses its reply, and then finds Postgres
    refusing every connection (``refuse_while_away``) until the test is over."""

    away = False

    def finish_success(self, *args: Any, **kwargs: Any) -> JobState | None:
        super().finish_success(*args, **kwargs)
        self.away = True
        raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))


def refuse_while_away(engine: sqlalchemy.Engine, jobs: CommitReplyLostThenAway) -> None:
    """Fail every statement on ``engine`` while ``jobs.away``, as a refused connection does."""

    @event.listens_for(engine, "before_cursor_execute")
    def refuse(*_: Any) -> None:
        if jobs.away:
            raise OperationalError("connect", {}, ConnectionRefusedError("connection refused"))


def test_a_commit_whose_reply_was_lost_keeps_its_outputs_while_the_database_stays_away(
    database_url: str,
    engine: sqlalchemy.Engine,
    object_store: S3ObjectStore,
    bucket: Bucket,
    models: Path,
    tmp_path: Path,
) -> None:
    """The away time outlasts the commit's retries (the lease) and the failure's: the worker cannot
    learn whether its commit landed, so it must not delete what the row may record (it did)."""
    worker_engine = make_engine(database_url)
    config = in_process_config(database_url, models, object_store)
    jobs = CommitReplyLostThenAway(
        worker_engine, lease_s=config.lease_s, affinity_window_s=config.affinity_window_s
    )
    refuse_while_away(worker_engine, jobs)
    job = make_job(models, steps=2)
    jobs.enqueue(job)
    try:
        with closing(Notifier(database_url)) as notifier:
            Worker(
                config,
                jobs=jobs,
                store=object_store,
                notifier=notifier,
                sessions=SessionCache(1, SessionSettings(providers=(CPU_PROVIDER,))),
            ).run(max_jobs=1)
    finally:
        worker_engine.dispose()

    row = job_row(engine, job.name)
    assert jobs.away and (row["state"], row["attempt"]) == (JobState.SUCCESS, 1), row
    assert_outputs_recorded_for(row, bucket, 1)
    client = falcon.testing.TestClient(
        create_app(
            Config(models_path=models, bundle_path=tmp_path / "bundle", s3_bucket=object_store.bucket),
            jobs=JobStore.configured(engine, config),
            store=object_store,
            registry=ModelRegistry(models, ()),
        )
    )
    served = client.simulate_get(f"/output/{row['outputs'][0]}")
    assert served.status_code == 200, served.text

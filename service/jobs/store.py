"""``JobStore``: the one owner of the jobs table; the api and the workers call its methods.

Every method runs named statements from ``queries.sql`` in one short transaction, and every state
change is a single statement that checks the current state, so two actors can never both win.
A worker's writes are fenced by ``(worker_id, attempt)``: once its job was rescued and claimed
again, the old attempt's heartbeats, progress and commits change nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sqlalchemy import Connection, Engine, Row, TextClause
from sqlalchemy.exc import SQLAlchemyError

from service.errors import IdempotencyConflict
from service.jobs.notify import CHANNEL, EVENTS_CHANNEL
from service.jobs.queries import QUERIES
from service.jobs.states import JobState

if TYPE_CHECKING:
    from service.config import Config

log = logging.getLogger(__name__)

#: ``(current, total)`` of one progress counter (steps, stages or tiles) as the row stores it.
CounterPair = tuple[int, int]


class OwnerBusy(Exception):
    """The owner already has as many jobs pending or running as ``enqueue``'s ``max_active``."""

    def __init__(self, active: int) -> None:
        super().__init__(f"{active} jobs pending or running")
        self.active = active


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A job to submit, fully resolved by the api (seeds chosen, defaults applied)."""

    id: UUID
    #: onnx-web's job name, ``<kind>_<seed>_<sha256>_<unix seconds>``; unique.
    name: str
    kind: str
    #: The chain document the worker runs, exactly as stored (a JSON object).
    chain: Mapping[str, Any]
    #: The model the job loads, for worker affinity; None when it needs none.
    model: str | None
    #: ``cpu``, ``cuda``…; None lets any worker take it.
    platform: str | None
    max_attempts: int
    priority: int = 0
    owner: str = "anonymous"
    idempotency_key: str | None = None
    #: sha256 of the submitted request: a reused idempotency key with another body is a conflict.
    request_hash: str | None = None
    #: Input field (``source``, ``mask``…) -> object key of the uploaded image.
    inputs: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    steps_total: int = 0
    stages_total: int = 0
    tiles_total: int = 0
    #: Estimated peak bytes per device kind (``pipelines.memory``); None: claimed by any worker.
    memory: Mapping[str, int] | None = None
    #: A URL to call when the job ends (checked by the api); None: no callback.
    callback: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobView:
    """What the api reports about a job."""

    id: UUID
    name: str
    kind: str
    state: JobState
    #: 0-based index among pending jobs in claim order (priority, then age); None unless pending.
    queue_position: int | None
    #: Number of pending jobs; 0 when none of the jobs read together is pending (the queue is
    #: counted only for an answer that shows it).
    queue_total: int
    steps: CounterPair
    stages: CounterPair
    tiles: CounterPair
    #: Output file names (``<name>_<i>.png``), set on success.
    outputs: tuple[str, ...] | None
    thumbnails: tuple[str, ...] | None
    #: One object per output.
    metadata: tuple[dict[str, Any], ...] | None
    #: File name -> object key, for images, thumbnails and ``.json`` sidecars.
    output_keys: dict[str, str] | None
    reason: str | None
    cancel_requested: bool
    attempt: int
    max_attempts: int
    model: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: ``{model, current, total}`` (bytes) while the worker pulls the job's model from the model store.
    loading: dict[str, Any] | None = None
    #: ``{attempt, step}`` of the live preview a running attempt stored (``service.previews``).
    preview: dict[str, Any] | None = None
    #: A pending job put back after a failed or rescued attempt is not claimed before this.
    retry_at: datetime | None = None
    #: The reason of the last failed or rescued attempt (``storage``, ``rescued`` …), if any.
    last_error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimedJob:
    """A job a worker now holds; ``(id, attempt)`` plus its worker id fence every later write."""

    id: UUID
    name: str
    kind: str
    attempt: int
    chain: dict[str, Any]
    inputs: dict[str, str]
    model: str | None
    max_attempts: int
    #: Whose job it is: a ``source-s3`` stage may read only its owner's outputs.
    owner: str = "anonymous"
    #: Seconds from submission to this claim (for the queue-wait metric).
    queued_s: float = 0.0


@dataclass(frozen=True)
class Heartbeat:
    """The answer to a heartbeat or a progress write."""

    #: False: the lease was lost (the job was rescued); stop and discard the results.
    owned: bool
    #: The user asked to cancel: stop at the next check and call ``finish_cancelled``.
    cancel_requested: bool


@dataclass(frozen=True, kw_only=True)
class Rescued:
    """A job taken back from a worker whose lease expired."""

    id: UUID
    name: str
    #: ``pending`` (attempts left), ``failed`` (reason ``rescued``) or ``cancelled``.
    state: JobState
    attempt: int
    #: The worker that lost it.
    worker_id: str


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    """A live worker as it last announced itself."""

    id: str
    platform: str
    #: The CUDA device index it runs on; None for a worker without CUDA.
    device: int | None
    #: Bytes one job may use on it; None when unknown.
    memory_bytes: int | None
    providers: tuple[str, ...]
    models: tuple[str, ...]
    version: str | None
    jobs_done: int
    started_at: datetime
    seen_at: datetime


class JobStore:
    """Submit, claim, track and finish jobs in Postgres."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float,
        affinity_window_s: float,
        retry_delay_s: float = 0.0,
        retry_delay_max_s: float = 0.0,
    ) -> None:
        """``retry_delay_s``: how long a job put back in the queue after its first failed (or
        rescued) attempt waits before it may be claimed again; the wait doubles with each attempt,
        up to ``retry_delay_max_s``, and half of it is random. 0: claimable at once."""
        self._engine = engine
        # One statement is one transaction: without BEGIN and COMMIT (or ROLLBACK) around it, each
        # call is one round trip to Postgres instead of three, with the same atomicity and, under
        # READ COMMITTED, the same snapshots.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._lease_s = lease_s
        self._affinity_window_s = affinity_window_s
        self._retry = {"retry_first_s": retry_delay_s, "retry_max_s": max(retry_delay_s, retry_delay_max_s)}

    @classmethod
    def configured(cls, engine: Engine, config: Config) -> JobStore:
        """The store as ``config`` sets it up: its lease, affinity window and retry backoff."""
        return cls(
            engine,
            lease_s=config.lease_s,
            affinity_window_s=config.affinity_window_s,
            retry_delay_s=config.retry_delay_s,
            retry_delay_max_s=config.retry_delay_max_s,
        )

    def keyed_job(self, owner: str, idempotency_key: str, request_hash: str) -> JobView | None:
        """The job an earlier submission of ``owner`` with this key made (None: none did); raises
        ``IdempotencyConflict`` when that submission had another body.

        Asked before any work, so a retry is answered without being charged or storing its uploads
        again; ``enqueue`` still settles concurrent first submissions.
        """
        params = {"owner": owner, "idempotency_key": idempotency_key}
        with self._single.connect() as conn:
            row = conn.execute(QUERIES["select_keyed_job"], params).first()
            if row is None:
                return None
            if row.request_hash != request_hash:
                raise IdempotencyConflict()
            return self._views(conn, [row.name])[row.name]

    def enqueue(self, job: NewJob, *, max_active: int | None = None) -> JobView:
        """Insert a pending job, or return the job an identical earlier submission created.

        The same ``(owner, idempotency_key)`` with the same ``request_hash`` answers the existing
        job, even a finished one; with another hash it raises ``IdempotencyConflict``. A taken name
        is treated the same way: onnx-web names hash the parameters, so the same name from the
        same owner and body is the same request. Safe under concurrent identical submissions.

        With ``max_active``, the owner's pending and running jobs are counted and the job inserted
        in one transaction holding a lock of that owner's: concurrent submissions cannot pass the
        limit together. ``OwnerBusy`` (with the count) when the owner has that many already.
        """
        params = {
            "id": job.id,
            "name": job.name,
            "owner": job.owner,
            "idempotency_key": job.idempotency_key,
            "request_hash": job.request_hash,
            "kind": job.kind,
            "priority": job.priority,
            "model": job.model,
            "platform": job.platform,
            "chain": json.dumps(job.chain),
            "inputs": json.dumps(job.inputs),
            "max_attempts": job.max_attempts,
            "request_id": job.request_id,
            "steps_total": job.steps_total,
            "stages_total": job.stages_total,
            "tiles_total": job.tiles_total,
            "memory": None if job.memory is None else json.dumps(dict(job.memory)),
            "callback": job.callback,
        }
        with self._engine.begin() as conn:
            if max_active is not None:
                conn.execute(QUERIES["lock_owner_submissions"], {"owner": job.owner})
                # A retry of a submission that got in first is answered its job, not refused.
                if conn.execute(QUERIES["select_conflicting_job"], params).first() is not None:
                    return self._earlier(conn, job, params)
                active = int(conn.execute(QUERIES["count_owner_active"], {"owner": job.owner}).scalar_one())
                if active >= max_active:
                    raise OwnerBusy(active)
            if conn.execute(QUERIES["insert_job"], params).first() is None:
                # ON CONFLICT waited for the other insert to commit, so this statement sees its row.
                return self._earlier(conn, job, params)
            view = self._views(conn, [job.name])[job.name]
        self._notify(pending=[job.model])
        return view

    def _earlier(self, conn: Connection, job: NewJob, params: Mapping[str, Any]) -> JobView:
        """The job that took ``job``'s idempotency key or name, if it is the same request."""
        existing = conn.execute(QUERIES["select_conflicting_job"], params).one()
        if existing.owner != job.owner or existing.request_hash != job.request_hash:
            if existing.same_key:
                raise IdempotencyConflict()
            raise IdempotencyConflict(f"job name {job.name} is taken by another request")
        return self._views(conn, [existing.name])[existing.name]

    def get_many(self, names: Sequence[str], *, owner: str | None = None) -> dict[str, JobView]:
        """The jobs with these names (unknown names are absent), with queue positions, in one query.

        With ``owner``, another owner's job is absent too (keys mode); so for every method below.
        """
        with self._single.connect() as conn:
            return self._views(conn, names, owner)

    def existing_names(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are jobs, whatever their state or owner (``service.gc``)."""
        with self._single.connect() as conn:
            return set(conn.execute(QUERIES["select_existing_names"], {"names": list(names)}).scalars())

    def owner_jobs(
        self, owner: str, *, state: JobState | None, limit: int, before: tuple[datetime, UUID] | None
    ) -> tuple[list[JobView], tuple[datetime, UUID] | None]:
        """A page of ``owner``'s jobs, newest first, and the cursor of the next page (None: last).

        ``before`` is the previous page's cursor; each view has its queue place, as ``get_many``.
        """
        params = {
            "owner": owner,
            "state": None if state is None else state.value,
            "limit": limit,
            "before_at": None if before is None else before[0],
            "before_id": None if before is None else before[1],
        }
        with self._single.connect() as conn:
            rows = conn.execute(QUERIES["select_owner_jobs"], params).all()
            page = rows[:limit]
            views = self._views(conn, [row.name for row in page], owner)
        following = (page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return [views[row.name] for row in page if row.name in views], following

    def recorded_output_key(self, job_name: str, filename: str, *, owner: str | None = None) -> str | None:
        """The object key succeeded job ``job_name`` recorded for ``filename``; None for any other
        job or name.

        One row by its unique name: unlike ``get_many``, it never ranks the queue.
        """
        params = {"name": job_name, "filename": filename, "owner": owner}
        with self._single.connect() as conn:
            key: str | None = conn.execute(QUERIES["select_output_key"], params).scalar_one_or_none()
        return key

    def queue_depth(self) -> int:
        """Number of pending jobs."""
        with self._single.connect() as conn:
            return int(conn.execute(QUERIES["count_pending"]).scalar_one())

    def queue_summary(self) -> list[Row[Any]]:
        """Unfinished jobs by state and model: ``state``, ``model``, ``jobs``, ``oldest_age_s``."""
        with self._single.connect() as conn:
            return list(conn.execute(QUERIES["queue_summary"]).all())

    def cancel(self, name: str, *, owner: str | None = None) -> JobState | None:
        """Cancel a job by name and return its resulting state; None for an unknown name.

        Pending ends ``cancelled`` at once; running stays ``running`` with ``cancel_requested``
        set until its worker stops; terminal jobs are left as they are.
        """
        with self._single.connect() as conn:
            row = conn.execute(QUERIES["cancel_job"], {"name": name, "owner": owner}).first()
        if row is None:
            return None
        if row.changed:
            self._notify(events=[name])
        return JobState(row.state)

    def claim(
        self,
        worker_id: str,
        *,
        platform: str,
        held_models: Sequence[str],
        memory_kind: str = "cpu",
        memory_bytes: int | None = None,
    ) -> ClaimedJob | None:
        """Take the next job for this worker, or None when nothing suits it.

        Highest priority first; within it, jobs older than the affinity window by age, then jobs
        for a model the worker holds, then the rest by age. With ``memory_bytes``, only jobs whose
        ``memory_kind`` estimate fits.
        """
        claimed = self.claim_batch(
            worker_id,
            platform=platform,
            held_models=held_models,
            batch_max=1,
            memory_kind=memory_kind,
            memory_bytes=memory_bytes,
        )
        return claimed[0] if claimed else None

    def claim_batch(
        self,
        worker_id: str,
        *,
        platform: str,
        held_models: Sequence[str],
        batch_max: int,
        memory_kind: str = "cpu",
        memory_bytes: int | None = None,
    ) -> list[ClaimedJob]:
        """Take the job ``claim`` would, plus up to ``batch_max - 1`` pending jobs that can share its batch.

        Mates have the first job's ``batch_key`` (plain txt2img, same model, size, scheduler and
        steps) and suit the platform; they come in queue order after the first job. Each is claimed
        as ``claim`` claims one: its own attempt, lease and worker. Empty when nothing suits.
        """
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, got {batch_max}")
        params = {
            "worker_id": worker_id,
            "platform": platform,
            "held_models": list(held_models),
            "lease_s": self._lease_s,
            "affinity_window_s": self._affinity_window_s,
            "batch_max": batch_max,
            "memory_kind": memory_kind,
            "memory_bytes": memory_bytes,
        }
        with self._single.connect() as conn:
            rows = conn.execute(QUERIES["claim_batch"], params).all()
        self._notify(events=[row.name for row in rows])
        return [_claimed(row) for row in rows]

    def heartbeat(self, job_id: UUID, worker_id: str, attempt: int) -> Heartbeat:
        """Renew the lease while this attempt still holds the job, and pass on a cancel request."""
        params = {"job_id": job_id, "worker_id": worker_id, "attempt": attempt, "lease_s": self._lease_s}
        with self._single.connect() as conn:
            cancel_requested = conn.execute(QUERIES["heartbeat"], params).scalar_one_or_none()
        if cancel_requested is None:
            return Heartbeat(owned=False, cancel_requested=False)
        return Heartbeat(owned=True, cancel_requested=cancel_requested)

    def progress(
        self,
        job_id: UUID,
        worker_id: str,
        attempt: int,
        steps: CounterPair,
        stages: CounterPair,
        tiles: CounterPair,
    ) -> Heartbeat:
        """Record progress (the worker throttles); answered as a heartbeat is: whether the attempt
        still holds the job, and whether a cancel was requested."""
        params = {
            "job_id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            **_counters(steps, stages, tiles),
        }
        with self._single.connect() as conn:
            row = conn.execute(QUERIES["record_progress"], params).first()
        if row is None:
            return Heartbeat(owned=False, cancel_requested=False)
        self._notify(events=[row.name])
        return Heartbeat(owned=True, cancel_requested=row.cancel_requested)

    def record_preview(self, job_id: UUID, worker_id: str, attempt: int, step: int | None) -> bool:
        """Note that the attempt stored a preview at ``step`` (None: no preview now); False when fenced."""
        preview = None if step is None else json.dumps({"attempt": attempt, "step": step})
        params = {"job_id": job_id, "worker_id": worker_id, "attempt": attempt, "preview": preview}
        return self._changed(QUERIES["record_preview"], params)

    def finish_success(
        self,
        job_id: UUID,
        worker_id: str,
        attempt: int,
        *,
        outputs: Sequence[str],
        thumbnails: Sequence[str] | None,
        metadata: Sequence[Mapping[str, Any]],
        output_keys: Mapping[str, str],
        steps: CounterPair,
        stages: CounterPair,
        tiles: CounterPair,
    ) -> JobState | None:
        """Make the outputs visible, if this attempt still holds the job; returns the new state.

        ``cancelled`` when a cancel was requested before this commit: the outputs are not recorded.
        None means a newer attempt owns (or finished) the job, or this attempt's own commit went
        through already (a retry after a lost reply). Unless it was that, the caller deletes the
        objects it uploaded, since the row will never point at them.
        """
        params = {
            "job_id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "outputs": json.dumps(list(outputs)),
            "thumbnails": None if thumbnails is None else json.dumps(list(thumbnails)),
            "metadata": json.dumps(list(metadata)),
            "output_keys": json.dumps(dict(output_keys)),
            **_counters(steps, stages, tiles),
        }
        return self._ended(QUERIES["finish_success"], params)

    def finish_failed(
        self, job_id: UUID, worker_id: str, attempt: int, *, reason: str, message: str, retryable: bool
    ) -> JobState | None:
        """Record a failed attempt and return the job's new state; None when the attempt was fenced.

        A retryable error with attempts left puts the job back in the queue (``pending``); otherwise
        it ends ``failed`` with ``reason``. Either way the error joins the job's history.
        """
        params = {
            "job_id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "reason": reason,
            "message": message,
            "retryable": retryable,
            **self._retry,
        }
        return self._ended(QUERIES["finish_failed"], params)

    def fail_held(self, worker_id: str, *, reason: str, message: str) -> list[str]:
        """End every attempt a dead worker still holds as failed with ``reason``, not retried.

        For a supervisor that knows why its worker died (the kernel's OOM killer): without it, the
        rescue would hand the same jobs to the next worker, to die the same way. Returns the names.
        """
        with self._engine.begin() as conn:
            held = conn.execute(QUERIES["select_held_by_worker"], {"worker_id": worker_id}).all()
        return [
            row.name
            for row in held
            if self.finish_failed(
                row.id, worker_id, row.attempt, reason=reason, message=message, retryable=False
            )
        ]

    def finish_cancelled(self, job_id: UUID, worker_id: str, attempt: int) -> bool:
        """End a cancel-requested job after its worker stopped; False when fenced or not requested."""
        return self._fenced(QUERIES["finish_cancelled"], job_id, worker_id, attempt)

    def release(self, job_id: UUID, worker_id: str, attempt: int) -> bool:
        """Hand the job back on graceful shutdown: pending again, the attempt not spent, no error."""
        return self._fenced(QUERIES["release_job"], job_id, worker_id, attempt)

    def rescue_expired(self) -> list[Rescued]:
        """Take back every running job whose lease expired; any live process may call this."""
        with self._single.connect() as conn:
            rows = conn.execute(QUERIES["rescue_expired"], self._retry).all()
        self._notify_ended(rows)
        return [
            Rescued(
                id=row.id,
                name=row.name,
                state=JobState(row.state),
                attempt=row.attempt,
                worker_id=row.worker_id,
            )
            for row in rows
        ]

    # -- workers -----------------------------------------------------------------------------

    def announce_worker(
        self,
        worker_id: str,
        *,
        platform: str,
        providers: Sequence[str],
        models: Sequence[str],
        version: str,
        jobs_done: int,
        device: int | None = None,
        memory_bytes: int | None = None,
    ) -> bool:
        """Record that a worker lives (on CUDA ``device``, if any, holding ``memory_bytes`` per job);
        True when an admin asked it to restart."""
        params = {
            "id": worker_id,
            "platform": platform,
            "device": device,
            "memory_bytes": memory_bytes,
            "providers": json.dumps(list(providers)),
            "models": json.dumps(list(models)),
            "version": version,
            "jobs_done": jobs_done,
        }
        with self._single.connect() as conn:
            return bool(conn.execute(QUERIES["announce_worker"], params).scalar_one())

    def retire_worker(self, worker_id: str) -> None:
        """Remove a stopping worker's row."""
        with self._single.connect() as conn:
            conn.execute(QUERIES["retire_worker"], {"id": worker_id})

    def live_workers(self, max_age_s: float) -> list[WorkerInfo]:
        """Workers that announced themselves within ``max_age_s`` seconds."""
        with self._engine.begin() as conn:
            conn.execute(QUERIES["forget_stale_workers"], {"max_age_s": max(max_age_s * 10, 3600)})
            rows = conn.execute(QUERIES["select_live_workers"], {"max_age_s": max_age_s}).all()
        # The statement selects exactly WorkerInfo's fields; JSON lists become tuples.
        return [
            WorkerInfo(**{**row._mapping, "providers": tuple(row.providers), "models": tuple(row.models)})
            for row in rows
        ]

    def active_jobs(self, limit: int) -> list[tuple[str, JobState, CounterPair]]:
        """Running, then pending jobs as ``(name, state, steps)``, at most ``limit``."""
        with self._single.connect() as conn:
            rows = conn.execute(QUERIES["select_active_jobs"], {"limit": limit}).all()
        return [(row.name, JobState(row.state), (row.steps_current, row.steps_total)) for row in rows]

    def request_restart(self, max_age_s: float) -> int:
        """Ask every live worker to exit after its current job; returns how many were asked."""
        with self._single.connect() as conn:
            return int(conn.execute(QUERIES["request_restart"], {"max_age_s": max_age_s}).rowcount)

    def _fenced(self, query: TextClause, job_id: UUID, worker_id: str, attempt: int) -> bool:
        """Run a fenced state change that returns ``name, state, model``; False when fenced."""
        params = {"job_id": job_id, "worker_id": worker_id, "attempt": attempt}
        return self._ended(query, params) is not None

    def _ended(self, query: TextClause, params: Mapping[str, Any]) -> JobState | None:
        """Run a fenced state change that returns ``name, state, model``; the new state, None when fenced."""
        with self._single.connect() as conn:
            row = conn.execute(query, params).first()
        if row is None:
            return None
        self._notify_ended([row])
        return JobState(row.state)

    def _changed(self, query: TextClause, params: Mapping[str, Any]) -> bool:
        """Run a fenced change that returns the job's ``name``; False when fenced."""
        with self._single.connect() as conn:
            name = conn.execute(query, params).scalar_one_or_none()
        if name is None:
            return False
        self._notify(events=[name])
        return True

    def _notify_ended(self, rows: Sequence[Row[Any]]) -> None:
        """Notify the changes of rows with ``name``, ``state`` and ``model``: events for each, and
        the models of those back in the queue, for idle workers."""
        self._notify(
            events=[row.name for row in rows],
            pending=[row.model for row in rows if row.state == JobState.PENDING.value],
        )

    def _notify(self, *, events: Sequence[str] = (), pending: Sequence[str | None] = ()) -> None:
        """Send the hints of changes that have committed (``notify`` in queries.sql says why apart).

        Never raises: the change is already committed, and a caller told it failed would act on a
        falsehood (a worker would delete the outputs of a job it had just finished). A notification
        lost to an outage only delays a listener until its next poll.
        """
        notes = [(EVENTS_CHANNEL, name) for name in events] + [(CHANNEL, model or "") for model in pending]
        if not notes:
            return
        channels, payloads = zip(*notes, strict=True)
        try:
            with self._single.connect() as conn:
                conn.execute(QUERIES["notify"], {"channels": list(channels), "payloads": list(payloads)})
        except SQLAlchemyError as err:
            log.warning("job notification not sent", extra={"notes": len(notes), "error": str(err)[:200]})

    def _views(self, conn: Connection, names: Sequence[str], owner: str | None = None) -> dict[str, JobView]:
        rows = conn.execute(QUERIES["select_jobs"], {"names": list(names), "owner": owner}).all()
        return {row.name: _view(row) for row in rows}


def _counters(steps: CounterPair, stages: CounterPair, tiles: CounterPair) -> dict[str, int]:
    return {
        "steps_current": steps[0],
        "steps_total": steps[1],
        "stages_current": stages[0],
        "stages_total": stages[1],
        "tiles_current": tiles[0],
        "tiles_total": tiles[1],
    }


def _claimed(row: Row[Any]) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        name=row.name,
        kind=row.kind,
        attempt=row.attempt,
        chain=row.chain,
        inputs=row.inputs,
        model=row.model,
        max_attempts=row.max_attempts,
        owner=row.owner,
        queued_s=row.queued_s,
    )


def _view(row: Row[Any]) -> JobView:
    return JobView(
        id=row.id,
        name=row.name,
        kind=row.kind,
        state=JobState(row.state),
        queue_position=row.queue_position,
        queue_total=row.queue_total,
        steps=(row.steps_current, row.steps_total),
        stages=(row.stages_current, row.stages_total),
        tiles=(row.tiles_current, row.tiles_total),
        outputs=None if row.outputs is None else tuple(row.outputs),
        thumbnails=None if row.thumbnails is None else tuple(row.thumbnails),
        metadata=None if row.metadata is None else tuple(row.metadata),
        output_keys=row.output_keys,
        reason=row.reason,
        cancel_requested=row.cancel_requested,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        model=row.model,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        loading=row.loading,
        preview=row.preview,
        retry_at=row.retry_at,
        last_error=row.last_error,
    )

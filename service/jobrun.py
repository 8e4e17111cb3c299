"""One claimed job while a worker holds it: its lease, progress, cancel checks and conclusion.

``JobRunner.hold`` starts a ``JobRun`` with a lease thread that renews the claim; the lease thread
and the progress writes both watch for cancellation. ``JobRun.conclude`` stores the outputs the job
produced and commits them, fenced by the job's attempt: a worker that lost its lease (a zombie) has
its commit refused and deletes what it wrote, and a job whose cancel was requested before the
commit ends ``cancelled`` instead. An attempt's objects are deleted only once the database has
answered that no row records them: a commit whose reply was lost may have gone through. Any other
ending (cancelled, released, failed) is recorded the same way whether the job ran alone
(``service.worker``) or in a batch (``service.batching``); so is the one summary line.

``OutputStage`` lets a worker store and commit one job (``JobRun.deliver``) in the background
while its next job generates; the job stays held, with its lease renewed, until its commit.

A job that generates longer than ``ONNX_WEB_JOB_TIMEOUT_S`` fails as ``timeout`` at its next check
(between steps, tiles and stages). One that reaches no check for ``ONNX_WEB_JOB_STUCK_S`` more is
stuck in native code (a driver, a kernel): its lease thread ends the attempt as ``timeout`` and
then the worker process, which nothing else could free; its supervisor starts a fresh one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from tenacity import (
    Retrying,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from pipelines.chain import ModelInvalid, unloadable_model
from pipelines.context import Counter, Output, Progress, StageCancelled, StageImage, StageText
from pipelines.imageops.metadata import CONTENT_TYPES, encode_image, thumbnail
from pipelines.stages.edit_safety import SafetyBlocked
from service import metrics
from service.config import Config
from service.conversion import ConversionFailed
from service.errors import InvalidParams, PayloadTooLarge, StorageError
from service.faults import fault_point
from service.fetch import SourceURLError
from service.jobs.store import ClaimedJob, CounterPair, Heartbeat, JobState, JobStore
from service.logs import OutageLog
from service.modelstore import MODEL_STORE_ERRORS
from service.output_names import SourceS3Refused, image_name, sidecar_name, thumbnail_name
from service.retries import first_line
from service.storage import ObjectStore, output_key, output_prefix

log = logging.getLogger(__name__)

#: While the database is away a running job's progress writes fail a few times a second: the first
#: failure is logged, then one line this often with the count of those left out, then the recovery.
PROGRESS_FAILURE_LOG_EVERY_S = 30.0


class JobTimedOut(Exception):
    """The job generated longer than the worker's time limit; another attempt would too."""

    code = "timeout"

    def __init__(self, limit_s: float, *, stuck: bool = False) -> None:
        text = f"the job ran longer than the time limit of {limit_s:g} s (ONNX_WEB_JOB_TIMEOUT_S)"
        super().__init__(text + (" and stopped at no check; the worker restarted" if stuck else ""))


#: The exit status of a worker that ended itself because a job was stuck (EX_SOFTWARE).
EXIT_STUCK = 70


def exit_stuck() -> None:
    """End the process now: a thread stuck in native code cannot be stopped any other way."""
    logging.shutdown()
    os._exit(EXIT_STUCK)


#: Error texts that mean the device ran out of memory (onnx-web's markers, contract §6.3).
OOM_MARKERS = (
    "out of memory",
    "failed to allocate memory",
    "hiperroroutofmemory",
    "miopen failure",
    "rocblas_status_memory_error",
    "bfcarena",
    # ONNX Runtime's CPU sessions run without the arena (pipelines.models.sessions): a failed
    # allocation is then C++'s own, "Status Message: std::bad_alloc".
    "std::bad_alloc",
)
#: Errors that a retry cannot fix: bad parameters, refused sources, undecodable images, missing files.
#: Failures whose ``code`` is the job's reason.
CODED_ERRORS = (
    SourceURLError
    | SourceS3Refused
    | SafetyBlocked
    | MODEL_STORE_ERRORS
    | ConversionFailed
    | ModelInvalid
    | JobTimedOut
)
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    JobTimedOut,
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    InvalidParams,
    PayloadTooLarge,
)
DB_RETRY = retry(
    retry=retry_if_exception_type(OperationalError),
    stop=stop_after_attempt(5),
    wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
    reraise=True,
)


class LeaseLost(Exception):
    """This worker no longer holds the job: it was rescued and may run elsewhere."""


class Released(Exception):
    """Shutdown ran out of grace time: hand the job back to the queue."""


@dataclass(frozen=True)
class StoredOutputs:
    """What ``finish_success`` records: names, metadata and the object key of every file."""

    outputs: list[str]
    thumbnails: list[str]
    metadata: list[dict[str, Any]]
    output_keys: dict[str, str]


class JobRunner:
    """What one worker lends every job it holds: its settings, the queue, the store, the release flag."""

    def __init__(
        self, config: Config, jobs: JobStore, store: ObjectStore, release_requested: threading.Event
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.store = store
        #: Set when shutdown ran out of grace: every held job hands itself back at its next check.
        self.release_requested = release_requested
        #: Jobs held to their end (a job handed back unspent is not counted).
        self.jobs_done = 0
        #: Jobs whose hold has begun: a job in the worker's output stage is taken but not yet done.
        self.jobs_taken = 0
        #: Set as an attempt fails, before the failure is recorded: the object store may be away,
        #: and the worker checks it before its next claim. Set first, so that a job the output
        #: stage hands back is not claimed again before the check.
        self.attempt_failed = threading.Event()
        #: What a lease thread calls once its job is stuck past the time limit and recorded failed.
        self.on_stuck: Callable[[], None] = exit_stuck
        # Holds end on the main thread and on the output stage's thread.
        self._counts = threading.Lock()

    @contextmanager
    def hold(self, job: ClaimedJob) -> Iterator[JobRun]:
        """A ``JobRun`` for ``job`` whose lease a thread renews until the block ends."""
        run = JobRun(self, job)
        lease = threading.Thread(target=run.keep_lease, name=f"lease-{job.name}", daemon=True)
        lease.start()
        with self._counts:
            self.jobs_taken += 1
        try:
            yield run
        finally:
            run.done.set()
            lease.join()
            with self._counts:
                self.jobs_done += 1

    @DB_RETRY
    def release(self, job: ClaimedJob) -> None:
        """Hand ``job`` back to the queue without spending its attempt; drop what the attempt uploaded."""
        self.discard(job)
        self.jobs.release(job.id, self.config.worker_id, job.attempt)

    def discard(self, job: ClaimedJob) -> None:
        """Delete whatever this attempt uploaded; its objects are never recorded, so never served."""
        try:
            self.store.delete_prefix(output_prefix(job.name, job.attempt))
        except StorageError as err:
            log.warning("could not delete an attempt's objects", extra={"job": job.name, "error": str(err)})


class JobRun:
    """The state of one claimed job while it runs: flags set by the lease thread, progress writes."""

    def __init__(self, runner: JobRunner, job: ClaimedJob) -> None:
        self.runner = runner
        self.config = runner.config
        self.job = job
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()
        #: Set once generation is over (the outputs are handed to ``deliver``, or the attempt ends):
        #: from then on the time limit no longer applies.
        self.generated = threading.Event()
        #: Conversions are bounded by their download limits and may rightly take hours.
        self.time_limit_s = self.config.job_timeout_s if job.kind != "convert" else 0.0
        #: Past this (``time.monotonic``), the next check fails the job as ``timeout``.
        self.deadline = time.monotonic() + self.time_limit_s if self.time_limit_s > 0 else math.inf
        self.latest = Progress()
        #: Why the attempt failed (``_fail``'s reason), for the summary's metrics; None otherwise.
        self.failure_reason: str | None = None
        # -inf: the first report is always written, whatever the monotonic clock reads.
        self._last_write = float("-inf")
        self._progress_outage = OutageLog(
            log, "progress write failed", "progress writes recovered", PROGRESS_FAILURE_LOG_EVERY_S
        )
        self._heartbeat_outage = OutageLog(
            log, "heartbeat failed", "heartbeats recovered", PROGRESS_FAILURE_LOG_EVERY_S
        )
        self._lock = threading.Lock()

    # -- while it runs -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise if the job must stop now: lease lost, cancelled, shutdown out of grace, or past its
        time limit (``JobTimedOut``, a final failure)."""
        self._check_held()
        if not self.generated.is_set() and time.monotonic() > self.deadline:
            raise JobTimedOut(self.time_limit_s)

    def _check_held(self) -> None:
        """Raise if this worker must let the job go: lease lost, cancelled, or shutdown out of grace."""
        if self.lost.is_set():
            raise LeaseLost(self.job.name)
        if self.cancelled.is_set():
            raise StageCancelled(self.job.name)
        if self.runner.release_requested.is_set():
            raise Released(self.job.name)

    def report(self, progress: Progress) -> None:
        """Keep the newest counters; write them at most every ``progress_interval_s``."""
        fault_point("mid_inference", steps=progress.steps.current)
        with self._lock:
            self.latest = progress
            now = time.monotonic()
            if now - self._last_write < self.config.progress_interval_s:
                return
            self._last_write = now
        self.flush()

    def generation_done(self) -> None:
        """Generation is over: its time limit stops applying (waiting for the output stage, or for
        S3, counts against none), and its final counters are written at once, so the status shows
        every step done while the outputs wait to be stored."""
        if self.generated.is_set():
            return
        self.generated.set()
        self.flush()

    def flush(self) -> None:
        """Write the newest counters now; the answer carries a lost lease or a cancel request."""
        progress = self.latest
        try:
            answer = self.runner.jobs.progress(
                self.job.id,
                self.config.worker_id,
                self.job.attempt,
                steps=_pair(progress.steps),
                stages=_pair(progress.stages),
                tiles=_pair(progress.tiles),
            )
        except OperationalError as err:
            self._progress_outage.failed(first_line(err), **self.keys(), action="progress_write")
            return
        self._progress_outage.recovered(**self.keys(), action="progress_write")
        self._note(answer)

    def keep_lease(self) -> None:
        """Renew the lease every ``heartbeat_s`` until the job is done; note cancels and loss.

        A job still generating ``job_stuck_s`` past its time limit never reached a check: it is
        recorded failed here, and the worker ended (``JobRunner.on_stuck``).
        """
        stuck_at = self.deadline + self.config.job_stuck_s
        while not self.done.wait(self.config.heartbeat_s):
            if not self.generated.is_set() and time.monotonic() > stuck_at:
                self._end_stuck()
                return
            fault_point("during_heartbeat")
            try:
                beat = self.runner.jobs.heartbeat(self.job.id, self.config.worker_id, self.job.attempt)
            except OperationalError as err:
                self._heartbeat_outage.failed(first_line(err), **self.keys(), action="heartbeat")
                continue
            self._heartbeat_outage.recovered(**self.keys(), action="heartbeat")
            self._note(beat)

    def _end_stuck(self) -> None:
        """Fail the stuck job as timed out (not retried: it would stick again), then end the worker.

        Unrecorded (the database away), its lease expires and rescue hands it on, as after any
        worker death.
        """
        log.error(
            "job stuck past its time limit, in no check for %s s; ending it, then this worker",
            self.config.job_stuck_s,
            extra={**self.keys(), "action": "stuck", "limit_s": self.time_limit_s},
        )
        self._fail(JobTimedOut(self.time_limit_s, stuck=True))
        self.runner.on_stuck()

    def _note(self, beat: Heartbeat) -> None:
        """Flag what a heartbeat or a progress write answered, for the job's next ``check``."""
        if not beat.owned:
            self.lost.set()
        if beat.cancel_requested:
            self.cancelled.set()

    def keys(self) -> dict[str, Any]:
        return {"job": self.job.name, "attempt": self.job.attempt, "worker": self.config.worker_id}

    # -- its end -----------------------------------------------------------------------------

    def conclude(self, produce: Callable[[], Sequence[Output]], timings: dict[str, int]) -> str:
        """Store and commit the outputs ``produce`` makes, or end the attempt as its error says.

        Returns the outcome for the summary line (``success``, ``cancelled``, ``fenced``,
        ``released``, ``retry``, ``failed`` or ``error``); raises only if the database stays
        unreachable while recording a cancel or a release.
        """
        try:
            outputs = produce()
        except Exception as err:  # every failure ends the attempt, never the worker
            return self.end(err)
        return self.deliver(outputs, timings)

    def deliver(self, outputs: Sequence[Output], timings: dict[str, int]) -> str:
        """Store and commit ``outputs``, or end the attempt as the error says; returns as ``conclude``.

        Run by the worker's output stage while the next job generates, so the job may have been
        cancelled, lost or called back while it waited: it is checked before anything is uploaded.
        """
        self.generation_done()
        try:
            self._check_held()
            upload_started = time.monotonic()
            stored = self._store_outputs(outputs)
            timings["upload"] = elapsed_ms(upload_started)
            self._check_held()
            fault_point("after_put_before_commit")
        except Exception as err:  # every failure ends the attempt, never the worker
            return self.end(err)
        # Stored outputs are worth waiting for: the commit is retried for as long as the lease
        # could still hold (a later one would be fenced anyway), not given up after seconds.
        commit = Retrying(
            retry=retry_if_exception_type(OperationalError),
            stop=stop_after_delay(self.config.lease_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
            reraise=True,
        )
        try:
            outcome = commit(self._commit, stored)
        except Exception as err:  # the commit may have gone through, its reply lost: ``_fail`` checks
            return self._fail(err, stored)
        fault_point("after_commit")
        return outcome

    def end(self, err: Exception) -> str:
        """End the attempt as ``err`` says: cancelled, fenced, handed back or failed; the outcome."""
        self.generated.set()
        if isinstance(err, StageCancelled):
            return "cancelled" if self._finish_cancelled() else "fenced"
        if isinstance(err, LeaseLost):
            self.runner.discard(self.job)
            return "fenced"
        if isinstance(err, Released):
            self.runner.release(self.job)
            return "released"
        return self._fail(err)

    def log_summary(self, outcome: str, started: float, timings: dict[str, int], **extra: Any) -> None:
        """The one summary line per job, with its phase timings; the same figures go to metrics."""
        metrics.job_ended(
            kind=self.job.kind,
            model=self.job.model,
            outcome=outcome,
            reason=self.failure_reason,
            seconds=time.monotonic() - started,
            timings_ms=timings,
            stage_types={stage["name"]: stage["type"] for stage in self.job.chain.get("stages", [])},
        )
        log.info(
            "job finished",
            extra={
                **self.keys(),
                "action": "job_summary",
                "outcome": outcome,
                "kind": self.job.kind,
                "total_ms": elapsed_ms(started),
                "phases_ms": timings,
                **extra,
            },
        )

    def _store_outputs(self, outputs: Sequence[Output]) -> StoredOutputs:
        """Encode and upload every output, its thumbnail and its sidecar under this attempt's prefix."""
        job, config = self.job, self.config
        settings: Mapping[str, Any] = job.chain.get("output", {})
        fmt = config.image_format
        ext = "jpeg" if fmt == "jpg" else fmt
        record = StoredOutputs([], [], [], {})
        for index, item in enumerate(outputs):
            if isinstance(item, StageText):
                self._store_text(index, item, record)
                continue
            name = image_name(job.name, index, ext)
            metadata = complete_metadata(
                item, name, job.chain.get("metadata", {}), job.chain.get("hashes", {})
            )
            data = encode_image(item.image, metadata, fmt=fmt, server_version=config.server_version)
            self._put(name, data, CONTENT_TYPES[fmt], record)
            self._put(sidecar_name(name), json.dumps(metadata).encode(), "application/json", record)
            record.outputs.append(name)
            record.metadata.append(metadata)
            if settings.get("thumbnail", True):
                thumb_name = thumbnail_name(job.name, index, ext)
                small = thumbnail(item.image, int(settings.get("thumbnail_size", config.thumbnail_size)))
                thumb = encode_image(small, None, fmt=fmt, server_version=config.server_version)
                self._put(thumb_name, thumb, CONTENT_TYPES[fmt], record)
                record.thumbnails.append(thumb_name)
        return record

    def _store_text(self, index: int, item: StageText, record: StoredOutputs) -> None:
        """A txt2txt output: ``<job>_<i>.txt`` (UTF-8 text) and its sidecar, no thumbnail."""
        name = image_name(self.job.name, index, TEXT_EXTENSION)
        metadata = {**self.job.chain.get("metadata", {}), **item.metadata}
        metadata["params"] = {**UNKNOWN_PARAMS, **metadata.get("params", {})}
        metadata.setdefault("loras", [])
        metadata.setdefault("inversions", [])
        _list_hashes(metadata, self.job.chain.get("hashes", {}))
        metadata["outputs"] = [name]
        self._put(name, item.text.encode("utf-8"), TEXT_CONTENT_TYPE, record)
        self._put(sidecar_name(name), json.dumps(metadata).encode(), "application/json", record)
        record.outputs.append(name)
        record.metadata.append(metadata)

    def _put(self, name: str, data: bytes, content_type: str, record: StoredOutputs) -> None:
        key = output_key(self.job.name, self.job.attempt, name)
        self.runner.store.put_bytes(key, data, content_type)
        record.output_keys[name] = key

    def _commit(self, stored: StoredOutputs) -> str:
        job, progress = self.job, self.latest
        state = self.runner.jobs.finish_success(
            job.id,
            self.config.worker_id,
            job.attempt,
            outputs=stored.outputs,
            thumbnails=stored.thumbnails,
            metadata=stored.metadata,
            output_keys=stored.output_keys,
            steps=_pair(progress.steps),
            stages=_pair(progress.stages),
            tiles=_pair(progress.tiles),
        )
        if state is None and self._already_committed(stored):
            state = JobState.SUCCESS
        if state == JobState.SUCCESS:
            return "success"
        # The row records none of this attempt's objects, and never will.
        self.runner.discard(job)
        if state == JobState.CANCELLED:
            log.info("cancelled before its commit", extra={**self.keys(), "action": "cancel"})
            return "cancelled"
        log.warning("commit refused: this attempt lost its lease", extra={**self.keys(), "action": "fenced"})
        return "fenced"

    def _already_committed(self, stored: StoredOutputs) -> bool:
        """Whether this very attempt's commit is the one the row records.

        A commit whose reply was lost is retried; the retry changes no row because the first one
        went through, and must not be taken for a lost lease (whose clean-up would delete the
        outputs the row now serves).
        """
        view = self.runner.jobs.get_many([self.job.name]).get(self.job.name)
        return (
            view is not None
            and view.state == JobState.SUCCESS
            and view.attempt == self.job.attempt
            and view.output_keys == stored.output_keys
        )

    @DB_RETRY
    def _finish_cancelled(self) -> bool:
        self.runner.discard(self.job)
        return self.runner.jobs.finish_cancelled(self.job.id, self.config.worker_id, self.job.attempt)

    def _fail(self, err: Exception, stored: StoredOutputs | None = None) -> str:
        """Record the failed attempt (back to the queue if another may succeed), then delete its objects.

        ``stored`` is what the attempt was committing when ``err`` came: that commit may have gone
        through with its reply lost. The objects are deleted only once the database has answered
        that no row records them; while it cannot be reached they stay, and the orphan collector
        (``service.gc``) deletes them later if no succeeded row records them.
        """
        text = str(err)
        oom = isinstance(err, MemoryError) or any(marker in text.lower() for marker in OOM_MARKERS)
        transient = isinstance(err, StorageError | OperationalError)
        # Out of memory is no bad luck: the next worker would run out the same way, so it ends here.
        retryable = not oom and (transient or not isinstance(err, PERMANENT_ERRORS))
        if isinstance(err, ConversionFailed):
            retryable = err.retryable
        # A model loaded outside a chain (the batched txt2img path) is not wrapped in ModelInvalid;
        # the same bytes fail again on any worker.
        unloadable = not isinstance(err, ModelInvalid) and unloadable_model(err)
        if unloadable:
            retryable = False
        if oom:
            reason = "oom"
        elif isinstance(err, StorageError):
            reason = "storage"
        elif unloadable:
            reason = ModelInvalid.code
        elif isinstance(err, CODED_ERRORS):
            reason = err.code
        else:
            reason = "error"
        self.failure_reason = reason
        self.runner.attempt_failed.set()
        failed = {**self.keys(), "action": "fail", "reason": reason, "retryable": retryable}
        if transient and retryable:
            # The database or the object store is away: expected, retried, and its traceback says
            # nothing the one line does not.
            log.warning("job failed", extra={**failed, "error": first_line(err)})
        else:
            log.error("job failed", exc_info=err, extra=failed)
        try:
            state = DB_RETRY(self.runner.jobs.finish_failed)(
                self.job.id,
                self.config.worker_id,
                self.job.attempt,
                reason=reason,
                message=f"{type(err).__name__}: {text}"[:2000],
                retryable=retryable,
            )
            # Refused: a newer attempt holds the job, or this attempt's own commit went through.
            committed = state is None and stored is not None and DB_RETRY(self._already_committed)(stored)
        except OperationalError:
            # The database stayed unreachable: the lease will expire and rescue will retry the job,
            # unless the commit went through. Only the orphan collector can tell these apart later.
            log.error(
                "could not record the failure; the attempt's objects are left to the orphan collector",
                extra={**self.keys(), "action": "fail"},
            )
            return "error"
        if committed:
            log.warning("the commit went through, its reply lost", extra={**self.keys(), "action": "fail"})
            self.failure_reason = None
            return "success"
        self.runner.discard(self.job)
        if state is None:
            return "fenced"
        return "retry" if state == JobState.PENDING else "failed"


class OutputStage:
    """One background thread that stores and commits finished jobs, at most ``depth`` at a time.

    The worker's main thread hands a job over once its pipeline has made the images, then claims
    and generates the next: PNG encoding and S3 uploads overlap generation. A full stage blocks the
    hand-over, so at most ``depth`` jobs' images wait in memory. A handed-over job is still held
    (leased, fenced, cancellable) until its commit or failure is recorded: ``work`` ends the hold.
    """

    def __init__(self, depth: int) -> None:
        self._slots = threading.Semaphore(depth)
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="output-stage", daemon=True)
        self._thread.start()

    def hand_over(self, work: Callable[[], None]) -> None:
        """Queue ``work`` (one job's store, commit and summary); blocks while the stage is full."""
        self._slots.acquire()
        self._queue.put(work)

    def close(self) -> None:
        """Wait until every job handed over has ended, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:
                # As on the main thread this would end the process; here it ends the job's hold
                # (its lease runs out, rescue hands it on) and the stage serves the next one.
                log.exception("output stage failed", extra={"action": "output_stage"})
            finally:
                self._slots.release()


#: A txt2txt output's extension and media type.
TEXT_EXTENSION = "txt"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
#: What onnx-web's GUI reads of every result's metadata (contract §7.3), with onnx-web's values
#: for an image no diffusion stage described (a blend, a plain upscale): its GUI reads
#: ``models[0].name`` and these params unguarded, and a blend result without them blanked the page.
UNKNOWN_PARAMS: Mapping[str, Any] = {
    "model": "unknown",
    "scheduler": "unknown",
    "prompt": "",
    "seed": 0,
    "cfg": 0.0,
    "steps": 0,
}


def complete_metadata(
    item: StageImage, name: str, chain_metadata: Mapping[str, Any], hashes: Mapping[str, str]
) -> dict[str, Any]:
    """The §7.3 metadata for one output: what the stages recorded, with the required keys filled
    and the hashes the extras give its models (``hashes``, which the api resolved)."""
    width, height = item.image.size
    metadata: dict[str, Any] = {**chain_metadata, **item.metadata}
    params = metadata["params"] = {**UNKNOWN_PARAMS, **metadata.get("params", {})}
    if not metadata.get("models"):
        metadata["models"] = [{"name": params["model"], "hash": "unknown", "weight": 1.0}]
    metadata.setdefault("loras", [])
    metadata.setdefault("inversions", [])
    _list_hashes(metadata, hashes)
    metadata.setdefault("input_size", {"width": width, "height": height})
    metadata["size"] = {"width": width, "height": height}
    metadata["outputs"] = [name]
    return metadata


def _list_hashes(metadata: dict[str, Any], hashes: Mapping[str, str]) -> None:
    """Give each listed model, LoRA and inversion the hash the extras give its name, if any."""
    for key in ("models", "loras", "inversions"):
        metadata[key] = [
            {**entry, "hash": hashes[entry["name"]]}
            if isinstance(entry, dict) and entry.get("name") in hashes
            else entry
            for entry in metadata.get(key, [])
        ]


def _pair(counter: Counter) -> CounterPair:
    return (counter.current, counter.total)


def elapsed_ms(started: float) -> int:
    """Whole milliseconds since ``started`` (a ``time.monotonic()`` reading)."""
    return int((time.monotonic() - started) * 1000)

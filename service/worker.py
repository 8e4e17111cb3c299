"""The worker: claims jobs, runs their chains on ONNX Runtime, stores outputs, commits success.

One worker process serves one device. Its main thread claims a job (one SQL statement, no lock
held afterwards) and runs it; a lease thread renews the claim and watches for cancellation; a
maintenance thread rescues jobs whose worker vanished. Success is committed only after every
output object is written, and only if this worker still holds the job's current attempt: a
worker that lost its lease (a zombie) has its commit refused and deletes what it wrote.

With ``batch_max`` above 1 the worker claims up to that many compatible plain txt2img jobs at
once and runs them as one UNet batch (``service.batching``); each is still leased, fenced and
finished on its own, through the same ``holding`` and ``conclude`` as a lone job.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from PIL import Image
from sqlalchemy.exc import OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from pipelines.chain import run_chain
from pipelines.context import Progress, StageCancelled, StageImage
from pipelines.imageops.metadata import CONTENT_TYPES, encode_image, thumbnail
from pipelines.models.sessions import SessionCache, available_providers
from pipelines.prefetch import s3_inputs, url_inputs
from service.batching import run_batch
from service.config import Config
from service.errors import InvalidParams, PayloadTooLarge, StorageError
from service.faults import fault_point
from service.fetch import SourceURLError, fetch_image_url
from service.images import decode_upload
from service.jobs.notify import Notifier
from service.jobs.store import ClaimedJob, JobState, JobStore
from service.outputs import recorded_key
from service.storage import ObjectStore, output_key, output_prefix

log = logging.getLogger(__name__)

#: Error texts that mean the device ran out of memory (onnx-web's markers, contract §6.3).
OOM_MARKERS = ("out of memory", "failed to allocate memory", "hiperroroutofmemory", "miopen failure",
               "rocblas_status_memory_error", "bfcarena")  # fmt: skip
#: Errors that a retry cannot fix: bad parameters, refused sources, undecodable images, missing files.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, FileNotFoundError, InvalidParams, PayloadTooLarge,
)  # fmt: skip
DB_RETRY = retry(
    retry=retry_if_exception_type(OperationalError),
    stop=stop_after_attempt(5),
    wait=wait_exponential_jitter(initial=0.2, max=5.0),
    reraise=True,
)


class SourceS3Refused(ValueError):
    """A source-s3 stage named something that is not a recorded output of a succeeded job."""

    code = "source_s3_refused"


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


class JobRun:
    """The state of one claimed job while it runs: flags set by the lease thread, progress writes."""

    def __init__(self, worker: Worker, job: ClaimedJob) -> None:
        self.worker = worker
        self.job = job
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()
        self.latest = Progress()
        # -inf: the first report is always written, whatever the monotonic clock reads.
        self._last_write = float("-inf")
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise if the job must stop now: lease lost, cancelled, or shutdown out of grace."""
        if self.lost.is_set():
            raise LeaseLost(self.job.name)
        if self.cancelled.is_set():
            raise StageCancelled(self.job.name)
        if self.worker.release_requested.is_set():
            raise Released(self.job.name)

    def report(self, progress: Progress) -> None:
        """Keep the newest counters; write them at most every ``progress_interval_s``."""
        fault_point("mid_inference", steps=progress.steps.current)
        with self._lock:
            self.latest = progress
            now = time.monotonic()
            if now - self._last_write < self.worker.config.progress_interval_s:
                return
            self._last_write = now
        self.flush()

    def flush(self) -> None:
        """Write the newest counters now (a lost lease shows up as a refused write)."""
        progress = self.latest
        try:
            owned = self.worker.jobs.progress(
                self.job.id, self.worker.config.worker_id, self.job.attempt,
                steps=_pair(progress.steps), stages=_pair(progress.stages), tiles=_pair(progress.tiles),
            )  # fmt: skip
        except OperationalError as err:
            log.warning("progress write failed", extra={**self.keys(), "error": str(err)})
            return
        if not owned:
            self.lost.set()

    def keep_lease(self) -> None:
        """Renew the lease every ``heartbeat_s`` until the job is done; note cancels and loss."""
        config = self.worker.config
        while not self.done.wait(config.heartbeat_s):
            fault_point("during_heartbeat")
            try:
                beat = self.worker.jobs.heartbeat(self.job.id, config.worker_id, self.job.attempt)
            except OperationalError as err:
                log.warning("heartbeat failed", extra={**self.keys(), "error": str(err)})
                continue
            if not beat.owned:
                self.lost.set()
            if beat.cancel_requested:
                self.cancelled.set()

    def keys(self) -> dict[str, Any]:
        return {"job": self.job.name, "attempt": self.job.attempt, "worker": self.worker.config.worker_id}


def _pair(counter: Any) -> tuple[int, int]:
    return (counter.current, counter.total)


class Worker:
    """Claims and runs jobs until stopped (SIGTERM/SIGINT or ``stop()``)."""

    def __init__(self, config: Config, jobs: JobStore, store: ObjectStore, sessions: SessionCache, notifier: Notifier) -> None:
        self.config = config
        self.jobs = jobs
        self.store = store
        self.sessions = sessions
        self.notifier = notifier
        self.providers = available_providers(sessions.settings)
        self.stopping = threading.Event()
        self.release_requested = threading.Event()
        self.jobs_done = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """First SIGTERM: stop claiming, finish the job within the grace time. Second: hand back now."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():
                log.warning("second stop signal: releasing the current job", extra={"action": "release"})
                self.release_requested.set()
                return
            log.info("stop signal: finishing the current job", extra={"action": "drain", "grace_s": self.config.shutdown_grace_s})
            self.stop()
            timer = threading.Timer(self.config.shutdown_grace_s, self.release_requested.set)
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def warm_up(self) -> None:
        """On a CUDA worker, load the configured models and capture their CUDA graphs now.

        cuDNN's algorithm search, arena growth and graph capture cost seconds; paying them here,
        before the first claim, keeps them off every user's first job.
        """
        if self.config.worker_platform != "cuda" or not self.config.warm_models:
            return
        from pipelines.diffusion.model import load_model
        from pipelines.gpu.runtime import Bucket, warm_up

        sizes = [tuple(int(side) for side in size.split("x")) for size in self.config.warm_sizes]
        buckets = [Bucket(width=width, height=height) for width, height in sizes]
        for name in self.config.warm_models:
            started = time.monotonic()
            warm_up(load_model(self.config.models_path, name, self.sessions), buckets)
            log.info("model warmed up", extra={"action": "warm_up", "model": name, "ms": _ms(started),
                                                "sizes": list(self.config.warm_sizes)})  # fmt: skip

    def stop(self) -> None:
        """Stop claiming new jobs; the current one runs on."""
        self.stopping.set()
        self.notifier.interrupt()

    def run(self, *, max_jobs: int | None = None) -> None:
        """Claim and run jobs until stopped (or until ``max_jobs`` have run)."""
        self._announce()
        maintenance = threading.Thread(target=self._maintenance_loop, name="maintenance", daemon=True)
        maintenance.start()
        log.info("worker started", extra={"action": "start", "worker": self.config.worker_id,
                                           "platform": self.config.worker_platform})  # fmt: skip
        while not self.stopping.is_set():
            claimed = self._claim()
            if not claimed:
                self.notifier.wait(self.config.poll_interval_s)
                continue
            if len(claimed) == 1:
                self.run_job(claimed[0])
            else:
                run_batch(self, claimed)
            if max_jobs is not None and self.jobs_done >= max_jobs:
                break
        self.stopping.set()
        try:
            self.jobs.retire_worker(self.config.worker_id)
        except OperationalError as err:
            log.warning("could not retire the worker row", extra={"action": "stop", "error": str(err)})
        log.info("worker stopped", extra={"action": "stop", "worker": self.config.worker_id, "jobs": self.jobs_done})

    def _maintenance_loop(self) -> None:
        """Rescue expired leases (any live process may) and announce this worker, every interval."""
        while not self.stopping.wait(self.config.rescue_interval_s):
            try:
                for rescued in self.jobs.rescue_expired():
                    log.warning("rescued a job whose lease expired", extra={
                        "action": "rescue", "job": rescued.name, "attempt": rescued.attempt,
                        "lost_by": rescued.worker_id, "state": rescued.state.value})  # fmt: skip
                self._announce()
            except OperationalError as err:
                log.warning("maintenance failed", extra={"action": "maintenance", "error": str(err)})

    def _announce(self) -> None:
        """Refresh this worker's row; an admin's restart request stops claiming after this job."""
        restart = self.jobs.announce_worker(
            self.config.worker_id, platform=self.config.worker_platform,
            providers=self.providers, models=self.sessions.held_models(self.config.models_path),
            version=self.config.server_version, jobs_done=self.jobs_done,
        )  # fmt: skip
        if restart and not self.stopping.is_set():
            log.info("restart requested by an admin", extra={"action": "restart", "worker": self.config.worker_id})
            self.stop()

    @DB_RETRY
    def _claim(self) -> list[ClaimedJob]:
        """The next job, with up to ``batch_max - 1`` that can share its batch when batching is on."""
        held = self.sessions.held_models(self.config.models_path)
        return self.jobs.claim_batch(self.config.worker_id, platform=self.config.worker_platform,
                                     held_models=held, batch_max=self.config.batch_max)  # fmt: skip

    # -- one job -----------------------------------------------------------------------------

    def run_job(self, job: ClaimedJob) -> None:
        """Run one claimed job to a final (or handed-back) state. Never raises."""
        fault_point("after_claim")
        timings: dict[str, int] = {}
        started = time.monotonic()
        with self.holding(job) as run:

            def produce() -> list[StageImage]:
                inputs = self._load_inputs(job)
                timings["load_inputs"] = _ms(started)
                result = run_chain(
                    job.chain,
                    models_path=self.config.models_path,
                    sessions=self.sessions,
                    inputs=inputs,
                    report=run.report,
                    check_cancelled=run.check,
                )
                timings.update(result.timings_ms)
                run.latest = result.progress
                return result.outputs

            outcome = self.conclude(run, produce, timings)
        self.log_summary(run, outcome, started, timings)

    @contextmanager
    def holding(self, job: ClaimedJob) -> Iterator[JobRun]:
        """A ``JobRun`` for ``job`` whose lease a thread renews until the block ends."""
        run = JobRun(self, job)
        lease = threading.Thread(target=run.keep_lease, name=f"lease-{job.name}", daemon=True)
        lease.start()
        try:
            yield run
        finally:
            run.done.set()
            lease.join()
            self.jobs_done += 1

    def conclude(self, run: JobRun, produce: Callable[[], list[StageImage]], timings: dict[str, int]) -> str:
        """Store and commit the outputs ``produce`` makes, or end the attempt as its error says.

        Returns the outcome for the summary line (``success``, ``cancelled``, ``fenced``,
        ``released``, ``retry``, ``failed`` or ``error``); raises only if the database stays
        unreachable while recording a cancel or a release.
        """
        try:
            outputs = produce()
            upload_started = time.monotonic()
            stored = self._store_outputs(run.job, outputs)
            timings["upload"] = _ms(upload_started)
            run.check()
            fault_point("after_put_before_commit")
            outcome = self._commit(run, stored)
            fault_point("after_commit")
        except StageCancelled:
            outcome = "cancelled" if self._finish_cancelled(run) else "fenced"
        except LeaseLost:
            outcome = "fenced"
            self._discard(run.job)
        except Released:
            outcome = "released"
            self._release(run)
        except Exception as err:  # every other failure ends the attempt, never the worker
            outcome = self._fail(run, err)
        return outcome

    def log_summary(
        self, run: JobRun, outcome: str, started: float, timings: dict[str, int], **extra: Any
    ) -> None:
        """The one summary line per job, with its phase timings."""
        log.info(
            "job finished",
            extra={**run.keys(), "action": "job_summary", "outcome": outcome, "kind": run.job.kind,
                   "total_ms": _ms(started), "phases_ms": timings, **extra},
        )  # fmt: skip

    def _load_inputs(self, job: ClaimedJob) -> dict[str, Image.Image]:
        """The job's uploads, plus the images its source-url and source-s3 stages read."""
        images: dict[str, Image.Image] = {}
        for field, key in (job.inputs or {}).items():
            images[field] = self._decode(self.store.get_bytes(key), field)
        for field, url in url_inputs(job.chain):
            data = fetch_image_url(url, max_bytes=self.config.source_url_max_bytes,
                                   timeout_s=self.config.source_url_timeout_s)  # fmt: skip
            images[field] = self._decode(data, field)
        for field, bucket, name in s3_inputs(job.chain):
            # Only outputs this service recorded for a succeeded job, in its own bucket: never
            # an arbitrary key, which could be another user's upload.
            recorded = recorded_key(self.jobs, name) if bucket == self.config.s3_bucket else None
            if recorded is None:
                raise SourceS3Refused(f"{field}: {name!r} is not an output of a succeeded job in {self.config.s3_bucket}")
            images[field] = self._decode(self.store.get_bytes(recorded), field)
        return images

    def _decode(self, data: bytes, field: str) -> Image.Image:
        return decode_upload(data, field, max_pixels=self.config.max_image_pixels)

    def _store_outputs(self, job: ClaimedJob, outputs: list[StageImage]) -> StoredOutputs:
        """Encode and upload every output, its thumbnail and its sidecar under this attempt's prefix."""
        settings: Mapping[str, Any] = job.chain.get("output", {})
        fmt = self.config.image_format
        ext = "jpeg" if fmt == "jpg" else fmt
        record = StoredOutputs([], [], [], {})
        for index, item in enumerate(outputs):
            name = f"{job.name}_{index}.{ext}"
            metadata = _complete_metadata(item, name, job.chain.get("metadata", {}))
            data = encode_image(item.image, metadata, fmt=fmt, server_version=self.config.server_version)
            self._put(job, name, data, CONTENT_TYPES[fmt], record)
            self._put(job, f"{name}.json", json.dumps(metadata).encode(), "application/json", record)
            record.outputs.append(name)
            record.metadata.append(metadata)
            if settings.get("thumbnail", True):
                thumb_name = f"{job.name}_thumbnail_{index}.{ext}"
                small = thumbnail(item.image, int(settings.get("thumbnail_size", self.config.thumbnail_size)))
                thumb = encode_image(small, None, fmt=fmt, server_version=self.config.server_version)
                self._put(job, thumb_name, thumb, CONTENT_TYPES[fmt], record)
                record.thumbnails.append(thumb_name)
        return record

    def _put(self, job: ClaimedJob, name: str, data: bytes, content_type: str, record: StoredOutputs) -> None:
        key = output_key(job.name, job.attempt, name)
        self.store.put_bytes(key, data, content_type)
        record.output_keys[name] = key

    @DB_RETRY
    def _commit(self, run: JobRun, stored: StoredOutputs) -> str:
        job, progress = run.job, run.latest
        committed = self.jobs.finish_success(
            job.id, self.config.worker_id, job.attempt,
            outputs=stored.outputs, thumbnails=stored.thumbnails, metadata=stored.metadata,
            output_keys=stored.output_keys,
            steps=_pair(progress.steps), stages=_pair(progress.stages), tiles=_pair(progress.tiles),
        )  # fmt: skip
        if committed or self._already_committed(job, stored):
            return "success"
        log.warning("commit refused: this attempt lost its lease", extra={**run.keys(), "action": "fenced"})
        self._discard(job)
        return "fenced"

    def _already_committed(self, job: ClaimedJob, stored: StoredOutputs) -> bool:
        """Whether this very attempt's commit is the one the row records.

        A commit whose reply was lost is retried; the retry changes no row because the first one
        went through, and must not be taken for a lost lease (whose clean-up would delete the
        outputs the row now serves).
        """
        view = self.jobs.get_many([job.name]).get(job.name)
        return (
            view is not None
            and view.state == JobState.SUCCESS
            and view.attempt == job.attempt
            and view.output_keys == stored.output_keys
        )

    @DB_RETRY
    def _finish_cancelled(self, run: JobRun) -> bool:
        self._discard(run.job)
        return self.jobs.finish_cancelled(run.job.id, self.config.worker_id, run.job.attempt)

    @DB_RETRY
    def _release(self, run: JobRun) -> None:
        self._discard(run.job)
        self.jobs.release(run.job.id, self.config.worker_id, run.job.attempt)

    def _fail(self, run: JobRun, err: Exception) -> str:
        text = str(err)
        oom = any(marker in text.lower() for marker in OOM_MARKERS)
        transient = isinstance(err, StorageError | OperationalError)
        retryable = oom or transient or not isinstance(err, PERMANENT_ERRORS)
        reason = "oom" if oom else ("storage" if isinstance(err, StorageError) else err.code if isinstance(err, SourceURLError | SourceS3Refused) else "error")
        log.error("job failed", exc_info=err, extra={**run.keys(), "action": "fail", "reason": reason, "retryable": retryable})
        self._discard(run.job)
        try:
            state = DB_RETRY(self.jobs.finish_failed)(
                run.job.id, self.config.worker_id, run.job.attempt,
                reason=reason, message=f"{type(err).__name__}: {text}"[:2000], retryable=retryable,
            )  # fmt: skip
        except OperationalError:
            # The database stayed unreachable: the lease will expire and rescue will retry the job.
            log.error("could not record the failure", extra={**run.keys(), "action": "fail"})
            return "error"
        if state is None:
            return "fenced"
        return "retry" if state == JobState.PENDING else "failed"

    def _discard(self, job: ClaimedJob) -> None:
        """Delete whatever this attempt uploaded; its objects are never recorded, so never served."""
        try:
            self.store.delete_prefix(output_prefix(job.name, job.attempt))
        except StorageError as err:
            log.warning("could not delete an attempt's objects", extra={"job": job.name, "error": str(err)})


def _complete_metadata(item: StageImage, name: str, chain_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The §7.3 metadata for one output: what the stages recorded, with the required keys filled."""
    width, height = item.image.size
    metadata: dict[str, Any] = {**chain_metadata, **item.metadata}
    metadata.setdefault("params", {})
    metadata.setdefault("models", [])
    metadata.setdefault("loras", [])
    metadata.setdefault("inversions", [])
    metadata.setdefault("input_size", {"width": width, "height": height})
    metadata["size"] = {"width": width, "height": height}
    metadata["outputs"] = [name]
    return metadata


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

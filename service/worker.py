"""The worker: claims jobs and runs their chains on ONNX Runtime.

One worker process serves one device. Its main thread claims a job (one SQL statement, no lock
held afterwards), loads its inputs and runs its chain; a maintenance thread rescues jobs whose
worker vanished. While a job runs, ``service.jobrun`` holds it: a lease thread renews the claim,
the lease thread and the progress writes watch for cancellation, and success is committed only
after every output object is written, only if this worker still holds the job's current attempt,
and only if no cancel was requested meanwhile.

With ``batch_max`` above 1 the worker claims up to that many compatible plain txt2img jobs at
once and runs them as one UNet batch (``service.batching``); each is still leased, fenced and
finished on its own, through the same ``JobRunner.hold`` and ``JobRun.deliver`` as a lone job.

With ``upload_depth`` above 0 a lone job's images, once made, go to an output stage (a thread of
``service.jobrun.OutputStage``) that encodes, uploads and commits them while the main thread
claims and generates the next job. The job stays held until its commit or failure is recorded,
so its lease is renewed, a cancel or a lost lease still stops it before the commit, and a storage
failure ends its attempt exactly as it would in turn. A full stage blocks the hand-over; on
stop, the stage empties before the worker retires.

An outage of Postgres or S3 is never a reason to exit: the worker waits it out (``outlast``), with
capped exponential backoff and one WARNING line per wait, then claims again.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import FrameType

from PIL import Image
from sqlalchemy.exc import OperationalError

from pipelines.chain import ChainResult, run_chain
from pipelines.context import Output, StageText
from pipelines.diffusion.preview import PREVIEW_MODELS
from pipelines.models.sessions import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    SessionCache,
    SessionSettings,
    available_providers,
)
from pipelines.prefetch import s3_inputs, url_inputs
from service import metrics
from service.batching import run_batch
from service.capacity import memory_kind, worker_memory
from service.config import Config, warm_shape
from service.conversion import ConversionFailed, ConversionSettings, StageReport, run_conversion
from service.faults import fault_point
from service.fetch import fetch_image_url
from service.images import decode_upload
from service.jobrun import JobRun, JobRunner, OutputStage, elapsed_ms
from service.jobs.extras import CONVERT_KIND
from service.jobs.notify import Notifier
from service.jobs.store import ClaimedJob, JobStore
from service.logs import OutageLog
from service.modelstore import LoadingReport, ModelCache, in_folder, job_model_names, sweep_deleting
from service.output_names import SourceS3Refused, recorded_key
from service.previews import PreviewWriter
from service.rescue import rescue_expired_leases
from service.retries import DB_OUTAGE, STORAGE_OUTAGE, first_line, outlast
from service.storage import ObjectStore

log = logging.getLogger(__name__)

#: Maintenance rounds between two sweeps of deleted models' objects.
SWEEP_EVERY = 10


def worker_sessions(config: Config) -> SessionCache:
    """The session cache of a worker: CUDA on ``config.device`` for a ``cuda`` worker, else CPU only.

    The GPU runtime (``pipelines.gpu.runtime.gpu_settings``) reads its device from these settings,
    so every session and every CUDA graph of the worker lands on the one device.
    """
    providers = (CUDA_PROVIDER, CPU_PROVIDER) if config.worker_platform == "cuda" else (CPU_PROVIDER,)
    return SessionCache(
        config.cache_models,
        SessionSettings(
            providers=providers, device_id=config.device, cuda_fuse_conv_bias=config.cuda_fuse_conv_bias
        ),
        on_load=partial(metrics.model_loaded, config.models_path),
    )


class Worker:
    """Claims and runs jobs until stopped (SIGTERM/SIGINT or ``stop()``)."""

    def __init__(
        self,
        config: Config,
        jobs: JobStore,
        store: ObjectStore,
        sessions: SessionCache,
        notifier: Notifier,
        *,
        chain_runner: Callable[..., ChainResult] = run_chain,
        model_cache: ModelCache | None = None,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.store = store
        self.sessions = sessions
        self.notifier = notifier
        #: Runs a job's chain (``run_chain``'s signature); ``bench.scale`` puts a timed sleep here to
        #: load the queue with every other part of the worker real.
        self.chain_runner = chain_runner
        #: Pulls from the model store the models a job names that the local folder lacks; None:
        #: the local folder only.
        self.model_cache = model_cache
        self.providers = available_providers(sessions.settings)
        #: The CUDA device this worker runs on; None when it has no CUDA provider.
        self.device = sessions.settings.device_id if CUDA_PROVIDER in self.providers else None
        #: What one job may use here; the worker claims only jobs estimated to fit (None: any).
        self.memory_kind = memory_kind(config.worker_platform)
        self.memory_bytes = worker_memory(
            config.worker_platform, self.device, configured=config.worker_memory
        )
        self.stopping = threading.Event()
        self.release_requested = threading.Event()
        self.runner = JobRunner(config, jobs, store, self.release_requested)
        #: Stores and commits finished jobs while the next one generates, from ``run`` on;
        #: None with ``upload_depth`` 0 (or outside ``run``): each job is stored before the next claim.
        self.outputs: OutputStage | None = None
        self._rounds = 0
        self._maintenance_outage = OutageLog(log, "maintenance failed", "maintenance works again", 60.0)
        #: The preview decoders' sessions, apart from the models': a preview never evicts a model
        #: from ``sessions`` nor counts as one the worker holds for claiming.
        self.preview_sessions = SessionCache(len(PREVIEW_MODELS), sessions.settings)

    @property
    def jobs_done(self) -> int:
        """Jobs run to their end since the worker started."""
        return self.runner.jobs_done

    # -- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """First SIGTERM: stop claiming, finish the job within the grace time. Second: hand back now."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():
                log.warning("second stop signal: releasing the current job", extra={"action": "release"})
                self.release_requested.set()
                return
            log.info(
                "stop signal: finishing the current job",
                extra={"action": "drain", "grace_s": self.config.shutdown_grace_s},
            )
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
        from pipelines.gpu.runtime import Bucket, device_memory_used, warm_up

        buckets = [Bucket(*warm_shape(size)) for size in self.config.warm_sizes]
        for name in self.config.warm_models:
            started = time.monotonic()
            missed = warm_up(load_model(self.config.models_path, name, self.sessions), buckets)
            log.info(
                "model warmed up",
                extra={
                    "action": "warm_up",
                    "model": name,
                    "ms": elapsed_ms(started),
                    "sizes": list(self.config.warm_sizes),
                    # Shapes left without a CUDA graph (runtime.warm_up logs which): slower, not broken.
                    "missed": len(missed),
                    # The whole device's, every process on it: what is left for more models or workers.
                    "gpu_used_gib": round(device_memory_used(self.config.device) / 2**30, 2),
                },
            )

    def stop(self) -> None:
        """Stop claiming new jobs; the current one runs on."""
        self.stopping.set()
        self.notifier.interrupt()

    def run(self, *, max_jobs: int | None = None) -> None:
        """Claim and run jobs until stopped (or until ``max_jobs`` have run).

        Outages of Postgres or S3 are waited out (``outlast``), never a reason to exit.
        """
        with contextlib.suppress(*DB_OUTAGE):  # raised only once stopping: the loop will not start
            outlast("postgres", self._announce, DB_OUTAGE, self.stopping)
        maintenance = threading.Thread(target=self._maintenance_loop, name="maintenance", daemon=True)
        maintenance.start()
        log.info(
            "worker started",
            extra={
                "action": "start",
                "worker": self.config.worker_id,
                "platform": self.config.worker_platform,
                "device": self.device,
                "memory_bytes": self.memory_bytes,
            },
        )
        if self.config.upload_depth:
            self.outputs = OutputStage(self.config.upload_depth)
        while not self.stopping.is_set():
            if self.runner.attempt_failed.is_set():
                # A job that could not load its inputs or store its outputs ended as a retry; had
                # the worker claimed again at once, an S3 outage would spend one attempt of every
                # job in the queue. The flag is set before the job is back in the queue.
                self.runner.attempt_failed.clear()
                try:
                    outlast("s3", self.store.ensure_bucket, STORAGE_OUTAGE, self.stopping)
                except STORAGE_OUTAGE:
                    break  # stopped while S3 was away
            try:
                claimed = outlast("postgres", self._claim, DB_OUTAGE, self.stopping)
            except DB_OUTAGE:
                break  # stopped while the database was away
            if not claimed:
                self.notifier.wait(self.config.poll_interval_s)
                continue
            if self.runner.attempt_failed.is_set():
                # An attempt failed in the output stage while this claim ran (the claim may even
                # hold the job it failed): hand the claim back unspent and check S3 first.
                self._hand_back(claimed)
                continue
            self._run_claimed(claimed)
            if max_jobs is not None and self.runner.jobs_taken >= max_jobs:
                break
        self.stopping.set()
        if self.outputs is not None:
            # Every job handed over ends before the worker retires: committed, failed, or handed
            # back at its next check once the grace time is up.
            self.outputs.close()
            self.outputs = None
        try:
            self.jobs.retire_worker(self.config.worker_id)
        except OperationalError as err:
            log.warning("could not retire the worker row", extra={"action": "stop", "error": str(err)})
        log.info(
            "worker stopped",
            extra={
                "action": "stop",
                "worker": self.config.worker_id,
                "jobs": self.jobs_done,
                "model_loads": self.sessions.loads,
            },
        )

    def _maintenance_loop(self) -> None:
        """Rescue expired leases (any live process may) and announce this worker, every interval."""
        while not self.stopping.wait(self.config.rescue_interval_s):
            try:
                rescue_expired_leases(self.jobs)
                self._announce()
                self._sweep_models()
            except OperationalError as err:
                self._maintenance_outage.failed(first_line(err), action="maintenance")
                continue
            self._maintenance_outage.recovered(action="maintenance")

    def _sweep_models(self) -> None:
        """Every ``SWEEP_EVERY`` maintenance rounds, remove what deleted models left in the store."""
        self._rounds += 1
        if self.model_cache is None or self._rounds % SWEEP_EVERY:
            return
        swept = sweep_deleting(self.store, self.model_cache.records)
        if swept:
            log.info("removed deleted models' objects", extra={"action": "sweep", "versions": swept})

    def _announce(self) -> None:
        """Refresh this worker's row; an admin's restart request stops claiming after this job."""
        restart = self.jobs.announce_worker(
            self.config.worker_id,
            platform=self.config.worker_platform,
            device=self.device,
            memory_bytes=self.memory_bytes,
            providers=self.providers,
            models=self.sessions.held_models(self.config.models_path),
            version=self.config.server_version,
            jobs_done=self.jobs_done,
        )
        if self.model_cache is not None:
            self.model_cache.records.record_worker_cache(self.config.worker_id, self.model_cache.cached())
        if restart and not self.stopping.is_set():
            log.info(
                "restart requested by an admin", extra={"action": "restart", "worker": self.config.worker_id}
            )
            self.stop()

    def _run_claimed(self, claimed: list[ClaimedJob]) -> None:
        """Run what was claimed: one job alone, several as one batch."""
        try:
            if len(claimed) == 1:
                self.run_job(claimed[0])
            elif not self._pulls_model(claimed[0]):
                run_batch(self.runner, self.sessions, claimed, run_alone=self.run_job)
            elif self._cached(claimed[0]):
                self._run_cached_batch(claimed)
            else:
                # A model still to be pulled: the first job runs alone (the lone path holds its
                # lease through the pull), the mates go back unspent; once it is cached, batches
                # of that model run from the cache.
                for mate in claimed[1:]:
                    self.runner.release(mate)
                self.run_job(claimed[0])
        except DB_OUTAGE as err:
            job_left(err)

    def _hand_back(self, claimed: list[ClaimedJob]) -> None:
        """Return claimed jobs to the queue without spending their attempts."""
        try:
            for job in claimed:
                self.runner.release(job)
        except DB_OUTAGE as err:
            job_left(err)

    def _claim(self) -> list[ClaimedJob]:
        """The next job, with up to ``batch_max - 1`` that can share its batch when batching is on."""
        held = self._held_models()
        claimed = self.jobs.claim_batch(
            self.config.worker_id,
            platform=self.config.worker_platform,
            held_models=held,
            batch_max=self.config.batch_max,
            memory_kind=self.memory_kind,
            memory_bytes=self.memory_bytes,
        )
        for job in claimed:
            metrics.job_claimed(job.model, job.queued_s)
        return claimed

    def _held_models(self) -> list[str]:
        """Models with sessions loaded, most recently used first, then those in the pull cache."""
        held = self.sessions.held_models(self.config.models_path)
        if self.model_cache is not None:
            held += self.sessions.held_models(self.model_cache.root) + self.model_cache.cached()
        return list(dict.fromkeys(held))

    def _cached(self, job: ClaimedJob) -> bool:
        """Whether the pull cache holds every model the job names that the local folder lacks."""
        assert self.model_cache is not None
        root = self.model_cache.root
        return all(
            in_folder(self.config.models_path, name) or in_folder(root, name)
            for name in job_model_names(job.chain, job.model)
        )

    def _run_cached_batch(self, claimed: list[ClaimedJob]) -> None:
        """A batch of a model the pull cache holds: pinned (and brought up to date) for the batch."""
        assert self.model_cache is not None
        names = job_model_names(claimed[0].chain, claimed[0].model)
        with contextlib.ExitStack() as pinned:
            try:
                folder = pinned.enter_context(self.model_cache.prepare(self.config.models_path, names))
            except Exception:  # withdrawn meanwhile, S3 away...: the lone path ends the job as it says
                for mate in claimed[1:]:
                    self.runner.release(mate)
                self.run_job(claimed[0])
                return
            run_batch(self.runner, self.sessions, claimed, run_alone=self.run_job, models_path=folder)

    def _pulls_model(self, job: ClaimedJob) -> bool:
        """Whether the job names a model the local folder lacks (the model store has it, or no one)."""
        if self.model_cache is None or job.kind == CONVERT_KIND:
            return False
        return not all(
            in_folder(self.config.models_path, name) for name in job_model_names(job.chain, job.model)
        )

    @contextlib.contextmanager
    def _job_models(self, run: JobRun, timings: dict[str, int]) -> Iterator[Path]:
        """The models folder the job's chain runs on, its models pulled from the store if needed."""
        if self.model_cache is None:
            yield self.config.models_path
            return
        job = run.job
        started = time.monotonic()
        loading = LoadingReport(
            self.model_cache.records,
            job.id,
            self.config.worker_id,
            job.attempt,
            self.config.progress_interval_s,
            check=run.check,
        )
        with self.model_cache.prepare(
            self.config.models_path, job_model_names(job.chain, job.model), loading
        ) as folder:
            loading.finish()
            timings["pull_models"] = elapsed_ms(started)
            yield folder

    # -- one job -----------------------------------------------------------------------------

    def run_job(self, job: ClaimedJob) -> None:
        """Run one claimed job to a final (or handed-back) state, or hand it to the output stage
        once its images are made; its summary line tells how it ended.

        Raises only when the database stays away while a cancel or a hand-back is recorded.
        """
        fault_point("after_claim")
        timings: dict[str, int] = {}
        started = time.monotonic()
        with contextlib.ExitStack() as held:
            run = held.enter_context(self.runner.hold(job))

            def produce() -> list[Output]:
                if job.kind == CONVERT_KIND:
                    return list(self._convert(run))
                inputs = self._load_inputs(job)
                timings["load_inputs"] = elapsed_ms(started)
                with self._job_models(run, timings) as models_path:
                    preview = self._previews(job, models_path)
                    try:
                        result = self.chain_runner(
                            job.chain,
                            models_path=models_path,
                            sessions=self.sessions,
                            inputs=inputs,
                            report=run.report,
                            check_cancelled=run.check,
                            preview=preview,
                        )
                    finally:
                        if preview is not None:
                            preview.finish()
                            timings["previews"] = int(preview.spent_s * 1000)
                timings.update(result.timings_ms)
                run.latest = result.progress
                return result.outputs

            try:
                images = produce()
            except Exception as err:  # every failure ends the attempt, never the worker
                outcome = run.end(err)
            else:
                run.generation_done()
                if self.outputs is not None:
                    # The hold (and so the lease) goes with the job: the stage ends it.
                    handed = held.pop_all()
                    self.outputs.hand_over(partial(self._deliver, run, images, started, timings, handed))
                    return
                outcome = run.deliver(images, timings)
        run.log_summary(outcome, started, timings)

    def _previews(self, job: ClaimedJob, models_path: Path) -> PreviewWriter | None:
        """The job's live previews, unless they are off (``ONNX_WEB_PREVIEW_INTERVAL_S=0``)."""
        if self.config.preview_interval_s <= 0:
            return None
        return PreviewWriter(
            job,
            self.config.worker_id,
            self.jobs,
            self.store,
            models_path,
            self.preview_sessions,
            interval_s=self.config.preview_interval_s,
            max_side=self.config.preview_max_side,
        )

    def _convert(self, run: JobRun) -> list[StageText]:
        """A conversion job's work: fetch, convert and publish its extras entry (``service.conversion``)."""
        if self.model_cache is None:
            raise ConversionFailed("no_model_store", "this worker has no model store to publish to")
        job, records = run.job, self.model_cache.records
        settings = ConversionSettings.from_config(self.config)
        report = StageReport(
            job.model or "",
            run.report,
            partial(records.record_loading, job.id, self.config.worker_id, job.attempt),
            run.check,
            settings.progress_interval_s,
        )
        try:
            return run_conversion(job.chain["convert"], job.name, settings, self.store, records, report)
        finally:
            run.flush()

    def _deliver(
        self,
        run: JobRun,
        images: list[Output],
        started: float,
        timings: dict[str, int],
        held: contextlib.ExitStack,
    ) -> None:
        """The output stage's part of a job: store and commit its images, end its hold, log it."""
        try:
            with held:
                outcome = run.deliver(images, timings)
        except DB_OUTAGE as err:
            job_left(err)
            return
        run.log_summary(outcome, started, timings)

    def _load_inputs(self, job: ClaimedJob) -> dict[str, Image.Image]:
        """The job's uploads, plus the images its source-url and source-s3 stages read."""
        images: dict[str, Image.Image] = {}
        for field, key in (job.inputs or {}).items():
            images[field] = self._decode(self.store.get_bytes(key), field)
        for field, url in url_inputs(job.chain):
            data = fetch_image_url(
                url, max_bytes=self.config.source_url_max_bytes, timeout_s=self.config.source_url_timeout_s
            )
            images[field] = self._decode(data, field)
        for field, bucket, name in s3_inputs(job.chain):
            # Only outputs this service recorded for a succeeded job of the same owner, in its own
            # bucket: never an arbitrary key, which could be another user's upload or output.
            in_bucket = bucket == self.config.s3_bucket
            recorded = recorded_key(self.jobs, name, owner=job.owner) if in_bucket else None
            if recorded is None:
                raise SourceS3Refused(
                    f"{field}: {name!r} is not an output of a succeeded job in {self.config.s3_bucket}"
                )
            images[field] = self._decode(self.store.get_bytes(recorded), field)
        return images

    def _decode(self, data: bytes, field: str) -> Image.Image:
        return decode_upload(data, field, max_pixels=self.config.max_image_pixels)


def job_left(err: BaseException) -> None:
    """Log that the database went away as a job ended (a cancel or a hand-back was not recorded).

    The job keeps its lease until it expires, then rescue hands it to a worker again.
    """
    log.warning(
        "the database went away as a job ended; rescue will retry it",
        extra={"action": "job_left", "dependency": "postgres", "error": first_line(err)},
    )

"""Prometheus metrics of the api and the workers, and the queue as the database sees it.

Three sources, one exposition format:

- **Requests** (api): a latency histogram per route template, method and status.
- **Jobs** (workers): job duration by kind, model and outcome; time per phase (each stage type,
  reading inputs, storing outputs) and model; queue wait (submission to claim) per model; jobs
  ended by outcome and reason; ONNX model files loaded and how long each load took.
- **The queue** (read from Postgres at scrape time, by the api): jobs pending and running per
  model, the oldest one's age, live workers and the age of each one's last heartbeat. Any api
  replica gives the same answer, so these suit an autoscaler.

Where the processes write their samples: with ``PROMETHEUS_MULTIPROC_DIR`` set, every process
writes to files in that folder and a scrape sums them (``prometheus_client``'s multiprocess
mode). ``onnx-web api`` gives its gunicorn workers a fresh folder of their own; the local stack
(``onnx-web run``) gives the api and all its workers one folder, so the api's ``/metrics`` shows
the whole machine. In a cluster each worker pod serves its own samples on
``ONNX_WEB_WORKER_METRICS_PORT`` and the api serves the request and queue metrics.

Labels hold only bounded values: route templates (never paths), registered model names, stage
types and the fixed outcome and reason vocabularies; never prompts, job names or keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy.exc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.jobs.store import JobStore

log = logging.getLogger(__name__)

#: The environment variable that switches prometheus_client to one file per process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Api latencies: a status poll is milliseconds, a submission with an upload up to seconds.
REQUEST_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Jobs and phases: a GPU step is milliseconds, a tiled CPU upscale many minutes.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

REQUEST_SECONDS = Histogram(
    "onnx_web_http_request_duration_seconds",
    "Time to answer an api request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=REQUEST_BUCKETS,
)
JOB_SECONDS = Histogram(
    "onnx_web_job_duration_seconds",
    "Time a worker spent on one attempt of a job, from claim to its end, by outcome.",
    ["kind", "model", "outcome"],
    buckets=JOB_BUCKETS,
)
PHASE_SECONDS = Histogram(
    "onnx_web_job_phase_duration_seconds",
    "Time of one phase of a job: a stage (by stage type), load_inputs or store_outputs.",
    ["phase", "model"],
    buckets=JOB_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "onnx_web_job_queue_wait_seconds",
    "Time from a job's submission to the claim that started its attempt.",
    ["model"],
    buckets=JOB_BUCKETS,
)
JOBS_ENDED = Counter(
    "onnx_web_job_attempts_ended",
    "Attempts that ended, by outcome (success, failed, retry, cancelled, released, fenced, "
    "error) and failure reason (empty unless the attempt failed).",
    ["outcome", "reason"],
)
MODEL_LOAD_SECONDS = Histogram(
    "onnx_web_model_load_seconds",
    "Time to load one ONNX file of a model into a session (a diffusion model is several files).",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)

#: Phase names of a job's timings that are not stages.
PHASES = {"load_inputs": "load_inputs", "upload": "store_outputs"}


def model_label(model: str | None) -> str:
    """The ``model`` label: the registered name, or ``none`` for jobs without one (blend)."""
    return model or "none"


def job_ended(
    *,
    kind: str,
    model: str | None,
    outcome: str,
    reason: str | None,
    seconds: float,
    timings_ms: Mapping[str, int],
    stage_types: Mapping[str, str],
) -> None:
    """Record one finished attempt: its duration, its outcome and the time of each phase.

    ``timings_ms`` is the job's phase timings keyed by stage *name* (plus ``load_inputs`` and
    ``upload``); ``stage_types`` maps those names to stage types, the bounded label.
    """
    label = model_label(model)
    JOB_SECONDS.labels(kind, label, outcome).observe(seconds)
    JOBS_ENDED.labels(outcome, reason or "").inc()
    for name, ms in timings_ms.items():
        phase = PHASES.get(name) or stage_types.get(name)
        if phase is not None:
            PHASE_SECONDS.labels(phase, label).observe(ms / 1000)


def job_claimed(model: str | None, waited_s: float) -> None:
    """Record how long a job waited in the queue before this attempt's claim."""
    QUEUE_WAIT_SECONDS.labels(model_label(model)).observe(max(waited_s, 0.0))


def model_loaded(models_path: Path, root: Path, seconds: float) -> None:
    """``SessionCache``'s load hook: one ONNX file of the model at ``root`` took ``seconds``."""
    try:
        name = root.with_suffix("") if root.suffix == ".onnx" else root
        label = name.resolve().relative_to(models_path.resolve()).as_posix()
    except ValueError:  # a model outside the models folder (a benchmark's own): keep it bounded
        label = "other"
    MODEL_LOAD_SECONDS.labels(label).observe(seconds)


def request_done(route: str | None, method: str, status: int, seconds: float) -> None:
    """Record one answered api request; unrouted paths share the label ``unmatched``."""
    REQUEST_SECONDS.labels(route or "unmatched", method, str(status)).observe(seconds)


class QueueCollector(Collector):
    """The queue as Postgres holds it, read at each scrape; ``onnx_web_database_up 0`` when the
    database does not answer, so a scrape during an outage still carries the api's own samples."""

    def __init__(self, jobs: JobStore, live_window_s: float) -> None:
        self.jobs = jobs
        self.live_window_s = live_window_s

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("onnx_web_database_up", "1 when the queue could be read at this scrape.")
        try:
            queue = self.jobs.queue_summary()
            workers = self.jobs.live_workers(self.live_window_s)
        except sqlalchemy.exc.SQLAlchemyError as err:
            log.warning("metrics could not read the queue", extra={"error": type(err).__name__})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "onnx_web_jobs", "Jobs not yet finished, by state and model.", labels=["state", "model"]
        )
        oldest = GaugeMetricFamily(
            "onnx_web_jobs_oldest_age_seconds",
            "Age of the oldest job not yet finished, by state and model.",
            labels=["state", "model"],
        )
        pending = GaugeMetricFamily("onnx_web_jobs_pending", "Jobs waiting for a worker.")
        for row in queue:
            labels = [row.state, model_label(row.model)]
            jobs.add_metric(labels, row.jobs)
            oldest.add_metric(labels, row.oldest_age_s)
        pending.add_metric([], sum(row.jobs for row in queue if row.state == "pending"))
        yield from (jobs, oldest, pending)
        live = GaugeMetricFamily(
            "onnx_web_workers",
            "Workers that announced themselves recently, by platform.",
            labels=["platform"],
        )
        for platform in sorted({worker.platform for worker in workers}):
            live.add_metric([platform], sum(worker.platform == platform for worker in workers))
        seen = GaugeMetricFamily(
            "onnx_web_worker_heartbeat_age_seconds",
            "Seconds since each live worker last announced itself.",
            labels=["worker"],
        )
        now = datetime.now(UTC)
        for worker in workers:
            seen.add_metric([worker.id], max((now - worker.seen_at).total_seconds(), 0.0))
        yield from (live, seen)


class _ThisProcess(Collector):
    """The samples of this process's default registry, for a scrape registry of its own."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The text a scrape returns: every process's samples (multiprocess mode) or this process's,
    plus ``extra`` collectors; and its content type."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int) -> None:
    """Serve this worker's samples (all the folder's, in multiprocess mode) on ``port``."""
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
    log.info("serving worker metrics", extra={"port": port})


def fresh_multiproc_dir(path: Path) -> Path:
    """Empty ``path`` of old samples (a previous run's counters would be summed into this one's)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path

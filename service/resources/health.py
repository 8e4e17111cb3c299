"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (Postgres and S3 answer),
``/metrics`` (Prometheus text: latencies, jobs and the queue, for dashboards and autoscaling)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import falcon
import sqlalchemy.exc

from service.errors import ServiceError, Unavailable
from service.jobs.store import JobStore
from service.metrics import QueueCollector, exposition
from service.storage import ObjectStore

log = logging.getLogger(__name__)


class HealthResource:
    """Liveness: answers as long as the process can serve a request; it touches no dependency, so
    an orchestrator never restarts a healthy api because Postgres or S3 is away."""

    #: Open without an API key, also in keys mode.
    access = "public"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}

    on_head = on_get


class ReadyzResource:
    """Readiness: each dependency answers a real request; 503 naming the ones that do not."""

    #: Open without an API key, also in keys mode.
    access = "public"

    def __init__(self, jobs: JobStore, store: ObjectStore) -> None:
        self.jobs = jobs
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        pending: list[int] = []
        checks = {
            "database": _check(lambda: pending.append(self.jobs.queue_depth())),
            # Creates the bucket when it is missing, so a fresh S3 server becomes ready by itself.
            "storage": _check(self.store.ensure_bucket),
        }
        ready = all(check["status"] == "ok" for check in checks.values())
        resp.media = {"status": "ok" if ready else "unavailable", "checks": checks}
        if pending:
            resp.media["pending"] = pending[0]
        if not ready:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", str(Unavailable.retry_after_s))

    on_head = on_get


def _check(probe: Callable[[], Any]) -> dict[str, Any]:
    """Run one dependency probe: its status, how long it took, and the kind of error if it failed."""
    started = time.monotonic()
    try:
        probe()
    except (ServiceError, sqlalchemy.exc.SQLAlchemyError) as err:
        log.warning("readiness check failed", extra={"error": type(err).__name__})
        return {"status": "unavailable", "error": type(err).__name__, "ms": _ms(started)}
    return {"status": "ok", "ms": _ms(started)}


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class MetricsResource:
    """Prometheus exposition: request latencies, the workers' job samples where they share this
    process's samples folder, and the queue read from Postgres (``service.metrics``)."""

    def __init__(self, jobs: JobStore, live_window_s: float) -> None:
        self.queue = QueueCollector(jobs, live_window_s)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, content_type = exposition([self.queue])
        resp.content_type = content_type
        resp.data = body

    on_head = on_get

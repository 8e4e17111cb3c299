"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (Postgres answers),
``/metrics`` (Prometheus text: queue depth, for dashboards and autoscaling)."""

from __future__ import annotations

import falcon

from service.jobs.store import JobStore


class HealthResource:
    """Liveness: answers as long as the process can serve a request."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyzResource:
    """Readiness: the database answers a real query."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "pending": self.jobs.queue_depth()}


class MetricsResource:
    """Prometheus exposition of the queue depth."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4"
        resp.text = (
            "# HELP onnx_web_jobs_pending Jobs waiting for a worker.\n"
            "# TYPE onnx_web_jobs_pending gauge\n"
            f"onnx_web_jobs_pending {self.jobs.queue_depth()}\n"
        )

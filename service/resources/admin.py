"""Admin routes (contract §4.15): worker status and restart, the extras file.

Each needs the admin token, as a ``token`` query parameter (what onnx-web's GUI sends) or an
``Authorization: Bearer`` header (which keeps it out of access logs and browser history).
"""

from __future__ import annotations

import hmac
from typing import Any

import falcon

from pipelines.models.registry import ModelRegistry
from service.errors import NotFound, NotImplementedYet, Unauthorized
from service.jobs.models import ModelRecords
from service.jobs.store import JobStore

ACTIVE_JOBS_LISTED = 100


class AdminResource:
    """Base of the admin resources: ``authorize`` refuses requests without the admin token (or,
    in keys mode, an admin key, which ``service.auth.KeyAuth`` checked)."""

    access = "admin"

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def authorize(self, req: falcon.Request) -> None:
        key = req.context.get("key")
        if key is not None and key.admin:
            return
        header = req.get_header("Authorization") or ""
        given = (
            header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else req.get_param("token")
        )
        if not given or not hmac.compare_digest(given.encode(), self._token):
            raise Unauthorized()


class WorkerStatusResource(AdminResource):
    """``GET /api/worker/status``: live workers and the active jobs."""

    def __init__(
        self, token: str, jobs: JobStore, live_window_s: float, models: ModelRecords | None = None
    ) -> None:
        super().__init__(token)
        self.jobs = jobs
        self.live_window_s = live_window_s
        #: The model store's registry: adds each worker's cached models, heartbeat age and job.
        self.models = models

    def status(self) -> dict[str, Any]:
        workers = self.jobs.live_workers(self.live_window_s)
        more = {
            found.id: {
                "cached_models": list(found.cached_models),
                "heartbeat_age_s": round(found.heartbeat_age_s, 3),
                "job": found.job,
                "loading": found.loading,
            }
            for found in (self.models.worker_status(self.live_window_s) if self.models else [])
        }
        return {
            # onnx-web's shapes: [name, steps, status] and [device, jobs run, alive].
            "jobs": [
                [name, {"current": steps[0], "total": steps[1]}, state.value]
                for name, state, steps in self.jobs.active_jobs(ACTIVE_JOBS_LISTED)
            ],
            "workers": [[worker.platform, worker.jobs_done, True] for worker in workers],
            "details": [
                {
                    "id": worker.id,
                    "platform": worker.platform,
                    "device": worker.device,
                    "memory_bytes": worker.memory_bytes,
                    "providers": list(worker.providers),
                    "models": list(worker.models),
                    "version": worker.version,
                    "jobs": worker.jobs_done,
                    "started": worker.started_at.isoformat(),
                    "seen": worker.seen_at.isoformat(),
                    **more.get(worker.id, {}),
                }
                for worker in workers
            ],
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        resp.media = self.status()


class WorkerRestartResource(AdminResource):
    """``POST /api/worker/restart``: every live worker exits after its job; supervisors restart it."""

    def __init__(self, token: str, status: WorkerStatusResource) -> None:
        super().__init__(token)
        self.status = status

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        self.status.jobs.request_restart(self.status.live_window_s)
        resp.media = self.status.status()


class ExtrasResource(AdminResource):
    """``GET /api/extras``: the first extras file as text; ``PUT`` is refused (see below)."""

    def __init__(self, token: str, registry: ModelRegistry) -> None:
        super().__init__(token)
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        files = self.registry.extras_files
        if not files or not files[0].is_file():
            raise NotFound("no extras file is configured")
        resp.content_type = falcon.MEDIA_JSON
        resp.text = files[0].read_text()

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        # onnx-web converted models inside this request, for minutes; api containers here are
        # stateless and read their models folder read-only.
        raise NotImplementedYet(
            "models are converted with 'onnx-web convert' and shipped in the models folder; "
            "the api does not rewrite extras files"
        )

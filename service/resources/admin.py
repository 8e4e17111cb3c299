"""Admin routes (contract §4.15): worker status and restart, the extras document, the model store.

Each needs the admin token, as a ``token`` query parameter (what onnx-web's GUI sends) or an
``Authorization: Bearer`` header (which keeps it out of access logs and browser history).
"""

from __future__ import annotations

import hmac
from typing import Any

import falcon

from pipelines.models.registry import ModelRegistry
from service.errors import InvalidParams, NotImplementedYet, PayloadTooLarge, Unauthorized
from service.extras import ExtrasService
from service.extras_document import MAX_DOCUMENT_BYTES, NAME_PATTERN
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

    on_head = on_get


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
    """``GET /api/extras``: the current extras document; ``PUT``: store one and start its conversions.

    The document is the newest one accepted by ``PUT`` (kept in Postgres, so every api container
    answers the same); before the first, the first extras file, as onnx-web read it; else ``{}``.
    """

    def __init__(self, token: str, registry: ModelRegistry, extras: ExtrasService | None) -> None:
        super().__init__(token)
        self.registry = registry
        self.extras = extras

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        files = self.registry.extras_files
        fallback = files[0].read_text() if files and files[0].is_file() else None
        resp.content_type = falcon.MEDIA_JSON
        if self.extras is None:
            resp.text = fallback or "{}"
        else:
            resp.text = self.extras.current_text(fallback)

    on_head = on_get

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        if self.extras is None:
            raise NotImplementedYet("this api runs without a model store: convert with 'onnx-web convert'")
        raw = req.bounded_stream.read(MAX_DOCUMENT_BYTES + 1)
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise PayloadTooLarge(f"an extras document is at most {MAX_DOCUMENT_BYTES} bytes")
        resp.media = self.extras.save(raw, created_by=_admin_name(req)).to_dict()


class ModelsResource(AdminResource):
    """``GET /api/models``: the model store's versions and the recent conversions."""

    def __init__(self, token: str, extras: ExtrasService) -> None:
        super().__init__(token)
        self.extras = extras

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.authorize(req)
        resp.media = self.extras.overview()


class ModelResource(AdminResource):
    """``DELETE /api/models/{name}``: withdraw a model; workers drop their copies at next use."""

    def __init__(self, token: str, extras: ExtrasService) -> None:
        super().__init__(token)
        self.extras = extras

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self.authorize(req)
        if not NAME_PATTERN.match(name):
            raise InvalidParams("name", "a model name: letters, digits, '.', '_' and '-'")
        resp.media = {"name": name, "versions": self.extras.delete_model(name)}


def _admin_name(req: falcon.Request) -> str:
    """Who made an admin change: the key's owner in keys mode, else ``admin``."""
    key = req.context.get("key")
    return key.owner if key is not None else "admin"

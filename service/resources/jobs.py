"""Job status and cancellation: ``GET /api/job/status``, ``PUT /api/job/cancel`` and the
deprecated ``GET /api/ready`` and ``PUT /api/cancel`` (contract §4.11-4.14)."""

from __future__ import annotations

from typing import Any

import falcon

from service.config import MAX_JOBS_PER_CALL
from service.errors import InvalidParams
from service.jobs.store import JobState, JobStore, JobView
from service.names import sanitize_name

ZERO = {"current": 0, "total": 0}


def render_job(name: str, view: JobView | None) -> dict[str, Any]:
    """One status record in onnx-web's shape; ``unknown`` for names this service never saw."""
    if view is None:
        return {
            "name": name,
            "status": "unknown",
            "queue": ZERO,
            "stages": ZERO,
            "steps": ZERO,
            "tiles": ZERO,
        }
    pending = view.state == JobState.PENDING
    record: dict[str, Any] = {
        "name": name,
        "status": view.state.value,
        "queue": {"current": view.queue_position or 0, "total": view.queue_total} if pending else ZERO,
        "stages": _counter(view.stages),
        "steps": _counter(view.steps),
        "tiles": _counter(view.tiles),
    }
    if view.reason:
        record["reason"] = view.reason
    if view.cancel_requested and view.state == JobState.RUNNING:
        record["cancelRequested"] = True
    if view.state == JobState.SUCCESS:
        record["outputs"] = list(view.outputs or [])
        record["metadata"] = list(view.metadata or [])
        if view.thumbnails:
            record["thumbnails"] = list(view.thumbnails)
    return record


def _counter(pair: tuple[int, int]) -> dict[str, int]:
    return {"current": pair[0], "total": pair[1]}


def job_names(req: falcon.Request) -> list[str]:
    """The names of a ``jobs=a,b`` (plus legacy ``job=c``) query, sanitised, 1 to 10 of them."""
    raw = req.get_param("jobs") or ""
    names = [sanitize_name(part.strip()) for part in raw.split(",") if part.strip()]
    legacy = req.get_param("job")
    if legacy:
        names.append(sanitize_name(legacy))
    names = [name for name in names if name]
    if not names:
        raise InvalidParams("jobs", "at least one job name is required")
    if len(names) > MAX_JOBS_PER_CALL:
        raise InvalidParams(
            "jobs", f"too many jobs: at most {MAX_JOBS_PER_CALL} names per call, got {len(names)}"
        )
    return names


class JobStatusResource:
    """``GET /api/job/status?jobs=a,b``: one record per name, in request order."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = job_names(req)
        views = self.jobs.get_many(names)
        resp.media = [render_job(name, views.get(name)) for name in names]


class JobCancelResource:
    """``PUT /api/job/cancel?jobs=a,b``: ``[{name, status}]`` with each job's resulting state."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = [_cancel(self.jobs, name) for name in job_names(req)]


def _cancel(jobs: JobStore, name: str) -> dict[str, Any]:
    state = jobs.cancel(name)
    record: dict[str, Any] = {"name": name, "status": state.value if state else "unknown"}
    if state == JobState.RUNNING:
        # The worker stops at its next check (between steps, tiles and stages).
        record["cancelRequested"] = True
    return record


def _output_name(req: falcon.Request) -> str:
    name = sanitize_name(req.get_param("output") or "")
    if not name:
        raise InvalidParams("output", "output name is required")
    return name


def _ready_record(**flags: Any) -> dict[str, Any]:
    return {"cancelled": False, "failed": False, "pending": False, "progress": 0, "ready": False, **flags}


class ReadyResource:
    """Deprecated ``GET /api/ready?output=name`` (contract §4.13), answered from the job row."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = _output_name(req)
        view = self.jobs.get_many([name]).get(name)
        if view is None:
            resp.media = _ready_record(ready=True, failed=True)
        elif view.state == JobState.PENDING:
            resp.media = _ready_record(pending=True)
        else:
            resp.media = _ready_record(
                ready=view.state in (JobState.SUCCESS, JobState.FAILED, JobState.CANCELLED),
                failed=view.state == JobState.FAILED,
                cancelled=view.state == JobState.CANCELLED,
                progress=view.steps[0],
            )


class LegacyCancelResource:
    """Deprecated ``PUT /api/cancel?output=name`` (contract §4.14)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self.jobs.cancel(_output_name(req))
        resp.media = _ready_record(cancelled=state in (JobState.CANCELLED, JobState.RUNNING))

"""Job status and cancellation: ``GET /api/job/status``, ``PUT /api/job/cancel`` and the
deprecated ``GET /api/ready`` and ``PUT /api/cancel`` (contract §4.11-4.14)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import falcon

from service.auth import key_owner, owner_filter
from service.config import MAX_JOBS_PER_CALL
from service.errors import InvalidParams, NotFound
from service.jobs.store import JobState, JobStore, JobView
from service.names import sanitize_name
from service.storage import ObjectStore, preview_key

ZERO = {"current": 0, "total": 0}
#: What a failed job's ``reason`` means, in words a user can act on (never a traceback).
FAILURE_MESSAGES = {
    "oom": "the job needed more memory than the worker has; try a smaller size, batch or tile",
    "storage": "the image store was unavailable while saving the results; submit the job again",
    "rescued": "the worker running the job stopped responding on every attempt",
    # What rows failed that way were given before the reason was named as documented.
    "rescue_exhausted": "the worker running the job stopped responding on every attempt",
    "error": "the job failed while running; the server's log has the details",
    "source_url_error": "a source image URL could not be read",
    "source_url_blocked": "a source image URL points at a private or local address",
    "source_url_too_large": "a source image URL is larger than the server accepts",
    "source_url_timeout": "a source image URL did not answer in time",
    "source_url_bad_type": "a source image URL is not a PNG, JPEG or WebP image",
    "source_url_failed": "a source image URL answered with an error",
    "source_s3_refused": "a source-s3 stage names something that is not one of your outputs",
    "model_missing": "the model is neither in the models folder nor in the model store",
    "model_corrupt": "a file of the model failed its check when the worker pulled it from the model store",
    "model_invalid": "a file of the model is damaged or not one ONNX Runtime can load; replace its files",
    "model_cache_full": "the worker's model cache has no room for the model",
    "timeout": "the job ran longer than the server's time limit; try fewer steps, a smaller size or images",
    "source_missing": "the conversion's source does not exist",
    "bad_source": "the conversion's source is not one this server may read",
    "download_failed": "the conversion's download failed",
    "hash_mismatch": "the conversion's download does not match its sha256",
    "too_large": "the conversion's download is larger than the server accepts",
    "pickle_refused": "the checkpoint is a pickle (it can run code when loaded); the worker refuses them",
    "bad_checkpoint": "the checkpoint is not a model of the kind its extras entry says",
    "no_model_store": "the worker has no model store to publish the converted model to",
}
#: The reason recorded for a failure no more specific reason explains; not sent as ``reason``.
GENERIC_FAILURE = "error"
#: Jobs per page of ``GET /api/jobs``: the default and the most.
LIST_LIMIT, LIST_MAX = 20, 100
#: ASCII digits only: ``str.isdigit`` also accepts ``²`` and other digits ``int`` cannot read.
LIMIT_TEXT = re.compile(r"[0-9]{1,3}")
#: The longest cursor read; ``_write_cursor``'s are about 110 characters.
MAX_CURSOR_CHARS = 200


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
    # onnx-web sends no reason for a failure it cannot explain, and its GUI looks a reason up as
    # a translation key, where "error" names a group of messages: that card would not render.
    # The message in "error" says the same in words.
    if view.reason and view.reason != GENERIC_FAILURE:
        record["reason"] = view.reason
    if view.state == JobState.FAILED:
        record["error"] = FAILURE_MESSAGES.get(view.reason or "error", FAILURE_MESSAGES["error"])
    if view.cancel_requested and view.state == JobState.RUNNING:
        record["cancelRequested"] = True
    if pending and view.attempt > 0:
        # Ours: an attempt failed or its worker died, and the job waits to run again; a worker
        # claims it no sooner than ``after`` (the backoff, ``ONNX_WEB_RETRY_DELAY_S``).
        retry: dict[str, Any] = {"attempt": view.attempt + 1, "maxAttempts": view.max_attempts}
        if view.retry_at is not None:
            retry["after"] = view.retry_at.isoformat()
        if view.last_error is not None:
            # Why the last attempt ended: ``storage``, ``rescued`` (its worker stopped), …
            retry["reason"] = view.last_error
        record["retry"] = retry
    if view.loading and view.state == JobState.RUNNING:
        # Ours: the worker is pulling the job's model from the model store before its first step.
        record["loading"] = dict(view.loading)
    if view.state == JobState.RUNNING and view.preview and view.preview.get("attempt") == view.attempt:
        # Ours: an approximate image of the running job's latents (``service.previews``).
        step = int(view.preview["step"])
        record["preview"] = {"url": f"/api/job/preview?job={quote(name)}&step={step}", "step": step}
    if view.state == JobState.SUCCESS:
        record["outputs"] = list(view.outputs or [])
        record["metadata"] = list(view.metadata or [])
        if view.thumbnails:
            record["thumbnails"] = list(view.thumbnails)
    return record


def _counter(pair: tuple[int, int]) -> dict[str, int]:
    return {"current": pair[0], "total": pair[1]}


def query_param(req: falcon.Request, name: str) -> str | None:
    """A query-string parameter; of a repeated name the first value counts, as for submissions
    (``service.params.request_data``) and in onnx-web's Flask (Falcon's ``get_param`` takes the last)."""
    value = req.params.get(name)
    return value[0] if isinstance(value, list) else value


def job_names(req: falcon.Request) -> list[str]:
    """The names of a ``jobs=a,b`` (plus legacy ``job=c``) query, sanitised, 1 to 10 of them."""
    raw = query_param(req, "jobs") or ""
    names = [sanitize_name(part.strip()) for part in raw.split(",") if part.strip()]
    legacy = query_param(req, "job")
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
        views = self.jobs.get_many(names, owner=owner_filter(req))
        resp.media = [render_job(name, views.get(name)) for name in names]

    on_head = on_get


class JobCancelResource:
    """``PUT /api/job/cancel?jobs=a,b``: ``[{name, status}]`` with each job's resulting state."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = [_cancel(self.jobs, name, owner_filter(req)) for name in job_names(req)]


def _cancel(jobs: JobStore, name: str, owner: str | None) -> dict[str, Any]:
    state = jobs.cancel(name, owner=owner)
    record: dict[str, Any] = {"name": name, "status": state.value if state else "unknown"}
    if state == JobState.RUNNING:
        # The worker stops at its next check (between steps, tiles and stages).
        record["cancelRequested"] = True
    return record


def _output_name(req: falcon.Request) -> str:
    name = sanitize_name(query_param(req, "output") or "")
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
        view = self.jobs.get_many([name], owner=owner_filter(req)).get(name)
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

    on_head = on_get


class LegacyCancelResource:
    """Deprecated ``PUT /api/cancel?output=name`` (contract §4.14)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self.jobs.cancel(_output_name(req), owner=owner_filter(req))
        resp.media = _ready_record(cancelled=state in (JobState.CANCELLED, JobState.RUNNING))


class JobListResource:
    """``GET /api/jobs?status=&limit=&cursor=``: the caller's own jobs, newest first (keys mode).

    In anonymous mode a job's name is its only credential, so there is no listing: 404.
    """

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # One's own jobs, admin keys included: an admin finds others' jobs by name.
        owner = key_owner(req)
        if owner is None:
            raise NotFound("listing jobs needs API keys (ONNX_WEB_AUTH=keys)")
        views, following = self.jobs.owner_jobs(
            owner,
            state=_list_state(req),
            limit=_list_limit(req),
            before=_read_cursor(query_param(req, "cursor")),
        )
        resp.media = {
            "jobs": [render_job(view.name, view) for view in views],
            "next": None if following is None else _write_cursor(following),
        }


def _list_state(req: falcon.Request) -> JobState | None:
    raw = query_param(req, "status")
    if not raw:
        return None
    try:
        return JobState(raw)
    except ValueError as err:
        names = ", ".join(state.value for state in JobState)
        raise InvalidParams("status", f"must be one of {names}") from err


def _list_limit(req: falcon.Request) -> int:
    raw = query_param(req, "limit") or str(LIST_LIMIT)
    if not LIMIT_TEXT.fullmatch(raw) or not 1 <= int(raw) <= LIST_MAX:
        raise InvalidParams("limit", f"must be an integer from 1 to {LIST_MAX}")
    return int(raw)


def _write_cursor(position: tuple[datetime, UUID]) -> str:
    text = json.dumps([position[0].isoformat(), str(position[1])])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_cursor(raw: str | None) -> tuple[datetime, UUID] | None:
    """The page position a cursor of ``_write_cursor`` names; 400 for anything else."""
    if not raw:
        return None
    position = _decode_cursor(raw) if len(raw) <= MAX_CURSOR_CHARS else None
    if position is None:
        raise InvalidParams("cursor", "is not a cursor this server gave")
    return position


def _decode_cursor(raw: str) -> tuple[datetime, UUID] | None:
    """``_write_cursor``'s position back, or None for text of any other shape."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(part, str) for part in parts)):
            return None
        when, job_id = datetime.fromisoformat(parts[0]), UUID(parts[1])
    except ValueError:  # bad base64 (binascii.Error), bad UTF-8 and bad JSON are ValueErrors too
        return None
    # The cursors this server writes carry the row's time zone; a naive time would compare as local.
    return (when, job_id) if when.tzinfo is not None else None


class JobPreviewResource:
    """``GET /api/job/preview?job=NAME``: the running job's latest live preview (a small JPEG).

    Only while the job runs, and only the attempt that holds it: a finished job's preview is gone
    (404), as is one before the first preview was stored. Never cached: each poll may bring a newer one.
    """

    def __init__(self, jobs: JobStore, store: ObjectStore) -> None:
        self.jobs = jobs
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = query_param(req, "job") or ""
        name = sanitize_name(raw.strip())
        if not name:
            raise InvalidParams("job", "the name of a running job")
        view = self.jobs.get_many([name], owner=owner_filter(req)).get(name)
        preview = view.preview if view is not None and view.state == JobState.RUNNING else None
        if view is None or not preview or preview.get("attempt") != view.attempt:
            raise NotFound("no preview: the job is not running, or has shown none yet")
        resp.content_type = "image/jpeg"
        resp.cache_control = ["no-store"]
        resp.data = self.store.get_bytes(preview_key(name, view.attempt))

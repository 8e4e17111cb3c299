"""The app factory: the only place that wires the api together.

``create_app(config, jobs=..., store=..., registry=...)`` builds the Falcon app from explicit
parts (tests pass their own); ``get_app()`` builds those parts from the environment for
gunicorn: ``gunicorn 'service.app:get_app()'``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import falcon
import sqlalchemy.exc
from tenacity import Retrying, retry_if_exception_type, wait_random_exponential

from pipelines.models.registry import ModelRegistry
from service import metrics
from service.admission import Admission
from service.auth import KeyAuth
from service.config import PRESIGN_EXPIRY_S, Config
from service.db import DATABASE_OUTAGES
from service.errors import (
    HTTP_STATUS,
    ConfigError,
    DatabaseUnavailable,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    StorageError,
    TooManyRequests,
    Unavailable,
)
from service.events import EventHub
from service.extras import ExtrasService
from service.inputs import check_query, check_query_string
from service.jobs.extras import ExtrasRecords
from service.jobs.keys import KeyStore
from service.jobs.models import ModelRecords
from service.jobs.store import JobStore
from service.modelstore import PublishedModels
from service.params import load_params_doc
from service.resources.admin import (
    ExtrasResource,
    ModelResource,
    ModelsResource,
    WorkerRestartResource,
    WorkerStatusResource,
)
from service.resources.bundle import ApiDocsResource, BundleResource
from service.resources.events import JobEventsResource
from service.resources.health import HealthResource, MetricsResource, ReadyzResource
from service.resources.introspect import IntrospectResource
from service.resources.jobs import (
    JobCancelResource,
    JobListResource,
    JobPreviewResource,
    JobStatusResource,
    LegacyCancelResource,
    ReadyResource,
)
from service.resources.openapi import OpenAPIResource
from service.resources.outputs import OutputResource
from service.resources.settings import SettingsResources
from service.resources.submit import SUBMIT_ROUTES, SubmitResource, Submitter
from service.storage import ObjectStore

log = logging.getLogger("service.access")

#: What reading a client's socket raises once it has been silent for the worker's time limit:
#: the kernel's receive timeout surfaces as EAGAIN on a blocking socket (see ``http_worker``).
CLIENT_TIMEOUTS: tuple[type[OSError], ...] = (BlockingIOError, TimeoutError)


def bounded_request_type(max_body_bytes: int) -> type[falcon.Request]:
    """Falcon's request class, with a chunked body read (to the same cap) before Falcon sees it.

    Without a ``Content-Length`` Falcon reads a body as empty, and its multipart parser fails; so a
    chunked body is read here, at most ``max_body_bytes + 1`` bytes of it, and given a length. One
    over the cap then gets the same 413 as a sized one.
    """

    class BoundedRequest(falcon.Request):
        def __init__(self, env: dict[str, Any], options: Any = None) -> None:
            chunked = "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()
            timed_out = False
            if chunked and not env.get("CONTENT_LENGTH"):
                try:
                    body = env["wsgi.input"].read(max_body_bytes + 1)
                except CLIENT_TIMEOUTS:
                    body, timed_out = b"", True
                env["wsgi.input"] = io.BytesIO(body)
                env["CONTENT_LENGTH"] = str(len(body))
            super().__init__(env, options)
            #: The client stalled while sending its chunked body (answered 408 by ``RequestContext``).
            self.body_timed_out = timed_out

    return BoundedRequest


class RequestContext:
    """Gives every request an id (from ``X-Request-ID`` or new), logs one access line, caps bodies
    and refuses query strings holding text Postgres cannot store."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.monotonic()
        req.context.request_id = (req.get_header("X-Request-ID") or uuid.uuid4().hex)[:64]
        resp.set_header("X-Request-ID", req.context.request_id)
        # Browsers must never guess a type: an output or error is what its Content-Type says.
        resp.set_header("X-Content-Type-Options", "nosniff")
        # Refuse before reading: a declared length over the cap never reaches a parser.
        if req.content_length is not None and req.content_length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body is {req.content_length} bytes, more than {self.max_body_bytes}"
            )
        if getattr(req, "body_timed_out", False):
            raise RequestTimeout()
        check_query_string(req.query_string)
        check_query(req.params)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool
    ) -> None:
        # The path only: query strings can carry prompts, which never go to INFO logs.
        started: float = req.context.get("started") or time.monotonic()
        metrics.request_done(req.uri_template, req.method, resp.status_code, time.monotonic() - started)
        log.info(
            "request",
            extra={
                "method": req.method,
                "path": req.path,
                "status": resp.status_code,
                "ms": int((time.monotonic() - started) * 1000),
                "request_id": req.context.get("request_id"),
            },
        )


def _service_error(
    req: falcon.Request, resp: falcon.Response, ex: ServiceError, params: dict[str, Any]
) -> None:
    status = next((code for kind, code in HTTP_STATUS.items() if isinstance(ex, kind)), 500)
    resp.status = falcon.code_to_http_status(status)
    resp.media = {"error": ex.message, **ex.details}
    if isinstance(ex, Unavailable | TooManyRequests):
        resp.set_header("Retry-After", str(ex.retry_after_s))


def _storage_error(
    req: falcon.Request, resp: falcon.Response, ex: StorageError, params: dict[str, Any]
) -> None:
    """S3 failed after its retries: a 503 the client may retry. Its message (keys, the endpoint,
    the client library's exception) goes to the log, never to the client."""
    logging.getLogger("service.app").warning(
        "object store unavailable",
        extra={"path": req.path, "request_id": req.context.get("request_id"), "error": ex.message},
    )
    _service_error(req, resp, StorageError("the object store is unavailable; try again shortly"), params)


def _client_too_slow(req: falcon.Request, resp: falcon.Response, ex: OSError, params: dict[str, Any]) -> None:
    """The client's socket hit the time limit while the app read its body (``http_worker``)."""
    resp.set_header("Connection", "close")
    _service_error(req, resp, RequestTimeout(), params)


def _database_error(
    req: falcon.Request, resp: falcon.Response, ex: sqlalchemy.exc.SQLAlchemyError, params: dict[str, Any]
) -> None:
    """Postgres refused, timed out or dropped the connection: a 503 the client may retry."""
    logging.getLogger("service.app").warning(
        "database unavailable",
        extra={"path": req.path, "request_id": req.context.get("request_id"), "error": type(ex).__name__},
    )
    _service_error(req, resp, DatabaseUnavailable("the database is unavailable; try again shortly"), params)


def _unexpected_error(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    if isinstance(ex, falcon.HTTPError | falcon.HTTPStatus):
        raise ex
    logging.getLogger("service.app").error(
        "unhandled error", exc_info=ex, extra={"path": req.path, "request_id": req.context.get("request_id")}
    )
    resp.status = falcon.HTTP_500
    resp.media = {"error": "internal server error", "request_id": req.context.get("request_id")}


def _http_error(req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError) -> None:
    """Falcon's own errors (404, 405, bad JSON) in our ``{"error": ...}`` shape."""
    message = exception.title or "error"
    if exception.description:
        message = f"{message}: {exception.description}"
    resp.media = {"error": message}
    resp.content_type = falcon.MEDIA_JSON


def create_app(
    config: Config,
    *,
    jobs: JobStore,
    store: ObjectStore,
    registry: ModelRegistry,
    platforms: Callable[[], list[str]] | None = None,
    keys: KeyStore | None = None,
    events: EventHub | None = None,
    models: ModelRecords | None = None,
    extras: ExtrasRecords | None = None,
) -> falcon.App:
    """Build the api from its parts; ``keys`` is required when ``config.auth`` is ``keys``;
    ``models`` (the model store's registry) adds its ready models to ``registry``'s; with
    ``extras`` too, admins store extras documents whose entries workers convert into the store."""
    middleware: list[Any] = [
        RequestContext(config.max_body_bytes),
        # A GUI on another origin reads how long a 429 or 503 asks it to wait, and the request id.
        falcon.CORSMiddleware(allow_origins=cors_origins(config), expose_headers=EXPOSED_HEADERS),
    ]
    if config.auth == "keys":
        if keys is None:
            raise ConfigError("ONNX_WEB_AUTH=keys needs the key store")
        middleware.append(KeyAuth(keys, config.admin_token))
    if models is not None:
        middleware.append(PublishedModels(models, registry, extras))
    app = falcon.App(middleware=middleware, request_type=bounded_request_type(config.max_body_bytes))
    app.req_options.strip_url_path_trailing_slash = True
    multipart_handler: Any = app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    multipart = multipart_handler.parse_options
    multipart.max_body_part_buffer_size = config.max_body_bytes
    multipart.max_body_part_count = 64
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(ServiceError, _service_error)
    app.add_error_handler(StorageError, _storage_error)
    for timeout in CLIENT_TIMEOUTS:
        app.add_error_handler(timeout, _client_too_slow)
    # Connection-level failures only; any other database error is a bug and stays a logged 500.
    for outage in DATABASE_OUTAGES:
        app.add_error_handler(outage, _database_error)
    app.set_error_serializer(_http_error)

    params_doc = load_params_doc(config)
    live_window_s = 3 * config.rescue_interval_s
    list_platforms = platforms or (lambda: live_platforms(jobs, config, live_window_s))
    worker_status = WorkerStatusResource(config.admin_token, jobs, live_window_s, models)
    admission = Admission(config, jobs, registry, live_window_s)
    submitter = Submitter(config, jobs, store, registry, params_doc, admission, keys)
    converting = (
        ExtrasService(jobs, extras, models, store, config.max_attempts, config.models_path)
        if models is not None and extras is not None
        else None
    )
    routes: list[tuple[str, Sequence[str], Any]] = [
        ("/", ["GET", "HEAD"], BundleResource(config.bundle_path)),
        ("/{filename:path}", ["GET", "HEAD"], BundleResource(config.bundle_path)),
        (
            "/output/{filename}",
            ["GET", "HEAD"],
            OutputResource(jobs, store, presign=config.s3_presign, presign_expiry_s=PRESIGN_EXPIRY_S),
        ),
        ("/api/job", ["POST"], SubmitResource(submitter, "chain")),
        ("/api/job/cancel", ["PUT"], JobCancelResource(jobs)),
        ("/api/job/preview", ["GET"], JobPreviewResource(jobs, store)),
        ("/api/job/status", ["GET", "HEAD"], JobStatusResource(jobs)),
        ("/api/jobs", ["GET"], JobListResource(jobs)),
        *(
            [("/api/job/events", ["GET"], JobEventsResource(jobs, events, max(1, config.api_threads // 2)))]
            if events is not None
            else []
        ),
        *[(f"/api/{route}", ["POST"], SubmitResource(submitter, route)) for route in SUBMIT_ROUTES],
        ("/api/cancel", ["PUT"], LegacyCancelResource(jobs)),
        ("/api/ready", ["GET", "HEAD"], ReadyResource(jobs)),
        ("/api/openapi.json", ["GET", "HEAD"], OpenAPIResource(app, config, params_doc, registry)),
        ("/api/docs", ["GET", "HEAD"], ApiDocsResource(config.bundle_path)),
        ("/api/extras", ["GET", "HEAD", "PUT"], ExtrasResource(config.admin_token, registry, converting)),
        *(
            [
                ("/api/models", ["GET"], ModelsResource(config.admin_token, converting)),
                ("/api/models/{name}", ["DELETE"], ModelResource(config.admin_token, converting)),
            ]
            if converting is not None
            else []
        ),
        ("/api/worker/restart", ["POST"], WorkerRestartResource(config.admin_token, worker_status)),
        ("/api/worker/status", ["GET", "HEAD"], worker_status),
        ("/healthz", ["GET", "HEAD"], HealthResource()),
        ("/readyz", ["GET", "HEAD"], ReadyzResource(jobs, store)),
        ("/metrics", ["GET", "HEAD"], MetricsResource(jobs, live_window_s)),
    ]
    for path, _methods, resource in routes:
        app.add_route(path, resource)
    settings = SettingsResources(config, registry, params_doc, list_platforms)
    settings.register(app)
    listed = [
        ("/api", ["GET", "HEAD"]),
        *[(path, methods) for path, methods, _ in routes],
        *settings.routes(),
    ]
    app.add_route("/api", IntrospectResource(sorted(listed, key=lambda route: _route_order(route[0]))))
    return app


#: Response headers a cross-origin client may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = ["Retry-After", "X-Request-ID"]


def cors_origins(config: Config) -> str | list[str]:
    """The origins browsers may call from: ``*`` in anonymous mode (onnx-web's GUI with ``?api=``
    works from anywhere), only the listed ones in keys mode."""
    listed = [origin for origin in config.cors_origins if origin != "*"]
    return "*" if "*" in config.cors_origins and config.auth == "off" else listed


def live_platforms(jobs: JobStore, config: Config, live_window_s: float) -> list[str]:
    """``any`` first, then the platforms live workers serve, ``cpu`` last (contract §5.6).

    With no live worker yet (all scaled to zero) the list is ``any`` and ``cpu``: jobs queue
    until a worker starts, and every worker image can serve ``cpu``.
    """
    served = {worker.platform for worker in jobs.live_workers(live_window_s)} or {"cpu"}
    served -= set(config.block_platforms)
    ordered = sorted(served - {"cpu"}) + (["cpu"] if "cpu" in served else [])
    return (["any"] if config.any_platform else []) + ordered


def _route_order(path: str) -> tuple[int, str]:
    """The bundle routes first, then outputs, then the api, as onnx-web registers them."""
    rank = 0 if not path.startswith(("/api", "/output", "/healthz", "/readyz", "/metrics")) else 1
    rank = 1 if path.startswith("/output") else rank
    rank = 2 if path.startswith("/api") else rank
    rank = 3 if path.startswith(("/healthz", "/readyz", "/metrics")) else rank
    return (rank, path)


def get_app() -> falcon.App:
    """Build the api from the environment (gunicorn's entry point)."""
    from service import logs
    from service.callbacks import CallbackDispatcher
    from service.db import API_DEADLINE_S, config_engine
    from service.jobs.callbacks import CallbackStore
    from service.rescue import LeaseRescuer
    from service.storage import API_PATIENCE, from_config

    config = Config.from_env()
    logs.configure(config.log_level, config.log_format)
    # A frozen Postgres must cost a request one bounded wait and a 503, never the thread.
    engine = config_engine(config, deadline_s=API_DEADLINE_S)
    jobs = JobStore.configured(engine, config)
    keys = KeyStore(engine) if config.auth == "keys" else None
    store = from_config(config, patience=API_PATIENCE)
    # Start serving now: with S3 away the api answers 503 on what needs it (and /readyz says so).
    threading.Thread(target=_ensure_bucket, args=(store,), name="ensure-bucket", daemon=True).start()
    registry = ModelRegistry(config.models_path, config.extra_models)
    # Jobs whose only worker is gone are put back in the queue by the api too.
    LeaseRescuer(jobs, config.rescue_interval_s).start()
    events = EventHub(config.database_url)
    if config.callback_secret:
        CallbackDispatcher(
            CallbackStore(engine),
            jobs,
            config.callback_secret,
            allow_private=config.callback_allow_private,
            per_owner=config.auth == "keys",
        ).start()
    return create_app(
        config,
        jobs=jobs,
        store=store,
        registry=registry,
        keys=keys,
        events=events,
        models=ModelRecords(engine),
        extras=ExtrasRecords(engine),
    )


def _ensure_bucket(store: ObjectStore) -> None:
    """Create the bucket once S3 answers, retrying with backoff for as long as the process lives."""
    retrying = Retrying(retry=retry_if_exception_type(StorageError), wait=wait_random_exponential(1, max=30))
    retrying(store.ensure_bucket)

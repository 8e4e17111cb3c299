"""One frozen ``Config``, read once from the environment and validated at start-up.

Tests build ``Config`` directly (``Config(database_url=..., ...)``); processes call
``Config.from_env()``. Every default is a named constant below. onnx-web's own variable names
(``ONNX_WEB_*``) are kept where onnx-web has one, so existing deployments keep their settings.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ConfigError

DEFAULT_PORT = 5000
DEFAULT_BUCKET = "onnx-web"
DEFAULT_MODELS_PATH = "models"
DEFAULT_BUNDLE_PATH = "gui/dist"
DEFAULT_SERVER_VERSION = "v0.13.0"
DEFAULT_IMAGE_FORMAT = "png"
DEFAULT_THUMBNAIL_SIZE = 1024
DEFAULT_CACHE_MODELS = 5
#: Where a worker keeps the models it pulls from the model store (``service.modelstore``); workers
#: of one machine may share it (a pull of one model downloads once).
DEFAULT_MODEL_CACHE_PATH = Path(tempfile.gettempdir()) / "onnx-web-model-cache"
#: Bytes of pulled models a worker keeps; the least recently used are evicted beyond it.
DEFAULT_MODEL_CACHE_BYTES = 64 * 1024**3
#: The largest checkpoint a conversion job downloads: an SDXL fp32 checkpoint is about 14 GB.
DOWNLOAD_MAX_BYTES = 32 * 1024**3
#: Live previews, where turned on (``onnx-web run`` and the manifests in ``infra/`` do): one every
#: 2 s at most, 256 px on its longer side, a GUI card's size. A bare worker shows none unless told.
PREVIEW_INTERVAL_S = 2.0
PREVIEW_MAX_SIDE = 256
CIVITAI_ROOT = "https://civitai.com/api/download/models"
#: The CUDA device a worker runs on; one worker per device (``onnx-web worker --device N``).
DEFAULT_DEVICE = 0
DEFAULT_MAX_ATTEMPTS = 3
#: A job put back in the queue after a failed or rescued attempt waits about this long (half of it
#: random) before a worker may claim it again; the wait doubles with each attempt, up to the
#: maximum. Without it, an outage of a few seconds spent all of a job's attempts.
RETRY_DELAY_S = 5.0
RETRY_DELAY_MAX_S = 300.0
#: How long a job may generate before it fails as ``timeout`` at its next check (conversion jobs
#: excepted); a GPU pool should set far less. A job that reaches no check ``JOB_STUCK_S`` after
#: that is stuck in native code: the worker records it failed and exits to be restarted.
JOB_TIMEOUT_S = 3600.0
JOB_STUCK_S = 120.0
#: Jobs a worker runs as one UNet batch; 1 (off) suits CPUs, where a batch costs its sum.
#: GPU workers should set 4: four SD 1.5 images cost about 1.15x one (issue 5).
DEFAULT_BATCH_MAX = 1
#: Every job of a batch waits for the whole batch, and its memory grows with it.
MAX_BATCH_MAX = 16
#: Finished jobs a worker stores and commits in the background while it generates the next:
#: one hides the PNG encoding and S3 uploads of a job behind the next job's generation.
DEFAULT_UPLOAD_DEPTH = 1
#: Each job waiting there keeps its images in memory and its lease renewed.
MAX_UPLOAD_DEPTH = 8
LEASE_S = 30.0
HEARTBEAT_S = 5.0
RESCUE_INTERVAL_S = 10.0
POLL_INTERVAL_S = 2.0
PROGRESS_INTERVAL_S = 0.25  # at most 4 progress writes a second per job
AFFINITY_WINDOW_S = 30.0  # how long a job may be passed over for one whose model a worker holds
SHUTDOWN_GRACE_S = 25.0  # inside Kubernetes' default 30 s between SIGTERM and SIGKILL
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
#: The largest image a job may make at any stage: a 4096² image upscaled twice, or 8192² (highres,
#: upscalers and grids multiply the size, and each later stage holds the whole image).
MAX_OUTPUT_PIXELS = 8192 * 8192
MAX_JOBS_PER_CALL = 10
PRESIGN_EXPIRY_S = 300
SOURCE_URL_MAX_BYTES = 20 * 1024 * 1024
SOURCE_URL_TIMEOUT_S = 15.0
API_WORKERS = 2
AUTH_MODES = ("off", "keys")
#: Threads per api process: one slow client holds one thread, the others keep serving.
API_THREADS = 8
#: How long an api process keeps an idle client connection open for its next request. Longer than
#: a GUI's poll interval (1-2 s), so polling reuses its connection; gunicorn's own default (2 s)
#: closed it between polls, and a request sent just as the server closed the connection failed
#: (locust saw it on POSTs, which clients do not resend). Behind a load balancer, set it above the
#: balancer's idle timeout (the Kubernetes manifests use 75 s for ingress-nginx's 60 s).
API_KEEPALIVE_S = 5
#: Postgres connections one process keeps open. An api thread holds at most one at a time, and a
#: worker at most three (its job, its lease thread, its maintenance thread), so 5 serves a worker
#: without waiting and an api process of 8 threads with few openings and closings.
DB_POOL_SIZE = 5
#: Connections opened beyond the pool in a burst, closed when returned. A process never holds more
#: than pool + overflow (15): plan Postgres' max_connections for that many per process, plus one
#: LISTEN connection per worker and api process.
DB_MAX_OVERFLOW = 10
#: ``onnx-web gc`` deletes an uploaded input (``inputs/<job>/``) that no job row names once it is
#: this old: the one leaves behind a submission whose database failed around its commit, kept in
#: case the row committed (``service.resources.submit``). gc runs hourly, so such an input lives one
#: to two hours.
GC_INPUT_AGE_S = 3600.0
#: The least that age may be. A submission stores its inputs before its row commits; the api gives
#: that commit about half a minute (``service.db``: the pool's 10 s wait, the 5 s connect timeout,
#: the 12 s it may hold a connection), but a COMMIT it gave up on may still reach Postgres while
#: the kernel retransmits it, up to about 15 minutes on Linux (``tcp_retries2``).
GC_INPUT_MIN_AGE_S = 1200.0
#: The exit status of a process stopped by its settings (``ConfigError``: a missing DATABASE_URL, a
#: database schema older than the code): starting it again would fail the same way, so
#: ``onnx-web run``'s supervisor does not (``service.stack.Supervised``).
CONFIG_ERROR_EXIT = 2
TRUTHY = frozenset({"1", "t", "true", "y", "yes", "on"})
FALSY = frozenset({"0", "f", "false", "n", "no", "off", ""})

T = TypeVar("T")


def parse_bool(value: str) -> bool:
    """Read onnx-web's truthy set (``1``, ``t``, ``true``, ``y``, ``yes``), refusing anything unclear."""
    lowered = value.strip().lower()
    if lowered in TRUTHY:
        return True
    if lowered in FALSY:
        return False
    raise ValueError(f"expected a boolean ({', '.join(sorted(TRUTHY))} or {', '.join(sorted(FALSY - {''}))})")


def parse_bool_or_auto(value: str) -> bool | None:
    """``auto`` as None (the setting is chosen at run time), else a boolean as ``parse_bool`` reads it."""
    if value.strip().lower() == "auto":
        return None
    try:
        return parse_bool(value)
    except ValueError as error:
        raise ValueError(f"{error}, or auto") from None


def parse_list(value: str) -> tuple[str, ...]:
    """Split a comma-separated list, dropping blanks."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


#: A warm size: ``WIDTHxHEIGHT``, then ``xIMAGES`` batched (default 1), then ``-unguided`` for jobs at
#: cfg 1 or less (turbo models, LCM-LoRAs), whose UNet calls have no guidance rows.
WARM_SIZE = re.compile(
    r"(?P<width>\d{2,5})x(?P<height>\d{2,5})(?:x(?P<images>[1-9]\d?))?(?P<unguided>-unguided)?"
)


def warm_shape(size: str) -> tuple[int, int, int, bool]:
    """``(width, height, images, guidance)`` of a warm size that ``Config`` accepted."""
    match = WARM_SIZE.fullmatch(size)
    if match is None:
        raise ValueError(f"not a warm size: {size!r}")
    images = int(match["images"] or 1)
    return int(match["width"]), int(match["height"]), images, match["unguided"] is None


@dataclass(frozen=True)
class Config:
    """Every setting of the api, the worker and the local stack."""

    #: SQLAlchemy/psycopg URL of the Postgres that holds the jobs table.
    database_url: str = ""
    #: S3 endpoint as ``host:port`` or a URL; empty means the embedded server of ``onnx-web run``.
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = DEFAULT_BUCKET
    s3_region: str = "us-east-1"
    #: Redirect ``GET /output/`` to presigned URLs instead of streaming through the api.
    s3_presign: bool = False

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    api_workers: int = API_WORKERS
    api_threads: int = API_THREADS
    api_keepalive_s: int = API_KEEPALIVE_S
    #: Postgres connections each process keeps open, and how many more a burst may open (see
    #: ``DB_POOL_SIZE``); a thread that finds all of them taken waits ``service.db.POOL_TIMEOUT_S``.
    db_pool_size: int = DB_POOL_SIZE
    db_max_overflow: int = DB_MAX_OVERFLOW
    #: A worker serves its Prometheus samples on this port; 0: it does not (the local stack's api
    #: serves them, from the shared samples folder).
    worker_metrics_port: int = 0
    models_path: Path = Path(DEFAULT_MODELS_PATH)
    bundle_path: Path = Path(DEFAULT_BUNDLE_PATH)
    #: A ``params.json`` to serve instead of the built-in one (onnx-web's ``ONNX_WEB_PARAMS_PATH``).
    params_path: Path | None = None
    extra_models: tuple[Path, ...] = ()
    #: Origins browsers may call the api from; ``*`` is honoured only with ``auth`` off.
    cors_origins: tuple[str, ...] = ("*",)
    #: ``off``: anonymous, as onnx-web; ``keys``: every route but settings, probes and the GUI's
    #: files needs ``Authorization: Bearer <key>`` and each job belongs to its key's owner.
    auth: str = "off"
    #: Keys the HMAC signature of job-end callbacks; unset: submissions may not ask for one.
    callback_secret: str | None = None
    #: Let callbacks reach private and loopback addresses (a receiver inside your own network).
    callback_allow_private: bool = False
    any_platform: bool = True
    block_platforms: tuple[str, ...] = ()
    default_platform: str | None = None
    image_format: str = DEFAULT_IMAGE_FORMAT
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE
    server_version: str = DEFAULT_SERVER_VERSION
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    feature_flags: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_output_pixels: int = MAX_OUTPUT_PIXELS

    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: The platform this worker serves: ``cpu`` or ``cuda`` (jobs asking for another are left alone).
    worker_platform: str = "cpu"
    #: The CUDA device index every session and the GPU runtime of this worker use.
    device: int = DEFAULT_DEVICE
    #: The CUDA-graph runtime's ``fuse_conv_bias`` (``pipelines.gpu.runtime.GpuSettings``): faster
    #: on an H100, slower on an H200 (``docs/gpu.md``, seventh round); None (``auto``, the default)
    #: times both at warm-up and keeps the faster.
    cuda_fuse_conv_bias: bool | None = None
    #: Bytes one job may use on this worker (``ONNX_WEB_WORKER_MEMORY``: ``16G``, ``512M`` or a
    #: number); None measures the container's limit or the GPU (``service.capacity``).
    worker_memory: int | None = None
    #: What the api admits when no live worker has announced its memory (None: anything).
    max_job_memory: int | None = None
    cache_models: int = DEFAULT_CACHE_MODELS
    #: The pull cache of models from the model store; ``models_path`` is looked in first.
    model_cache_path: Path = DEFAULT_MODEL_CACHE_PATH
    model_cache_bytes: int = DEFAULT_MODEL_CACHE_BYTES
    #: Models a CUDA worker loads and captures CUDA graphs for before it claims its first job.
    warm_models: tuple[str, ...] = ()
    #: UNet shapes captured for each warm model (``WARM_SIZE``): ``512x512`` is one image with
    #: guidance, ``512x512x4`` four batched images, ``512x512-unguided`` one at cfg 1 or less.
    warm_sizes: tuple[str, ...] = ("512x512",)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: The backoff between attempts (``RETRY_DELAY_S``): first wait, and the longest.
    retry_delay_s: float = RETRY_DELAY_S
    retry_delay_max_s: float = RETRY_DELAY_MAX_S
    #: The time limit of a job's generation (``JOB_TIMEOUT_S``; 0: none), and how long past it a
    #: job that reaches no check may hold the worker.
    job_timeout_s: float = JOB_TIMEOUT_S
    job_stuck_s: float = JOB_STUCK_S
    #: Up to this many compatible plain txt2img jobs are claimed and run as one batch.
    batch_max: int = DEFAULT_BATCH_MAX
    #: Up to this many finished lone jobs are stored and committed while the next one generates;
    #: 0 stores each job before the next claim.
    upload_depth: int = DEFAULT_UPLOAD_DEPTH
    #: ``onnx-web gc`` deletes uploaded inputs no job names once this old (``GC_INPUT_AGE_S``).
    gc_input_age_s: float = GC_INPUT_AGE_S
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    rescue_interval_s: float = RESCUE_INTERVAL_S
    poll_interval_s: float = POLL_INTERVAL_S
    progress_interval_s: float = PROGRESS_INTERVAL_S
    affinity_window_s: float = AFFINITY_WINDOW_S
    #: After SIGTERM, how long a worker may finish its job before it hands the job back.
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    #: Live previews of running diffusion jobs: at most one per this many seconds (0: none).
    preview_interval_s: float = 0.0
    #: The longer side of a preview image, in pixels.
    preview_max_side: int = PREVIEW_MAX_SIDE
    #: ``source-url`` fetches: size cap and total time limit per image.
    source_url_max_bytes: int = SOURCE_URL_MAX_BYTES
    source_url_timeout_s: float = SOURCE_URL_TIMEOUT_S
    #: Conversion jobs: local ``source`` paths must lie below this folder (None: the models folder).
    import_path: Path | None = None
    #: Conversion jobs: the most one download (or one hub snapshot) may weigh.
    download_max_bytes: int = DOWNLOAD_MAX_BYTES
    #: Conversion jobs may load pickle checkpoints (.ckpt, .pt, .pth, .bin), which can run code.
    allow_pickle: bool = False
    civitai_token: str | None = field(default=None, repr=False)
    #: Where civitai:// sources download from (a mirror, or a test's loopback server).
    civitai_root: str = CIVITAI_ROOT
    #: The Hugging Face hub hub ids are fetched from (``HF_ENDPOINT``, as huggingface_hub reads it).
    hf_endpoint: str | None = None
    #: What a conversion job makes of a diffusion model: ``fp32`` graphs (every worker), ``cuda``
    #: fused fp16 graphs (CUDA workers pull them instead); empty: both on a CUDA worker, else fp32.
    convert_variants: tuple[str, ...] = ()

    log_level: str = "INFO"
    #: ``json`` for one JSON object a line (production), ``text`` for people at a terminal.
    log_format: str = "json"

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port must be 1-65535, got {self.port}")
        if self.heartbeat_s >= self.lease_s:
            problems.append(
                f"heartbeat ({self.heartbeat_s}s) must be shorter than the lease ({self.lease_s}s)"
            )
        if not 1 <= self.batch_max <= MAX_BATCH_MAX:
            problems.append(f"batch_max must be 1-{MAX_BATCH_MAX}, got {self.batch_max}")
        if self.preview_interval_s < 0:
            problems.append(f"preview interval must be 0 (off) or positive, got {self.preview_interval_s}")
        if not set(self.convert_variants) <= {"fp32", "cuda"}:
            problems.append(f"convert variants are fp32 and cuda, got {', '.join(self.convert_variants)}")
        if not 0 <= self.upload_depth <= MAX_UPLOAD_DEPTH:
            problems.append(f"upload_depth must be 0-{MAX_UPLOAD_DEPTH}, got {self.upload_depth}")
        if not 0 <= self.worker_metrics_port < 65536:
            problems.append(f"worker metrics port must be 0 (off) or 1-65535, got {self.worker_metrics_port}")
        if self.db_pool_size < 1 or self.db_max_overflow < 0:
            problems.append(
                f"the database pool needs at least 1 connection and 0 or more overflow, "
                f"got {self.db_pool_size} and {self.db_max_overflow}"
            )
        if self.device < 0:
            problems.append(f"device must be a CUDA device index (0 or more), got {self.device}")
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if self.job_timeout_s < 0 or self.job_stuck_s <= 0:
            problems.append(
                f"the job time limit must be 0 (none) or more and the stuck time more than 0, got "
                f"{self.job_timeout_s}s and {self.job_stuck_s}s"
            )
        if not 0 <= self.retry_delay_s <= self.retry_delay_max_s:
            problems.append(
                f"the retry delay must be 0 or more and at most its maximum, got {self.retry_delay_s}s "
                f"and at most {self.retry_delay_max_s}s"
            )
        if self.gc_input_age_s < GC_INPUT_MIN_AGE_S:
            problems.append(
                f"gc_input_age_s must be at least {GC_INPUT_MIN_AGE_S:g}s (a submission's inputs may "
                f"wait that long for its row), got {self.gc_input_age_s:g}s"
            )
        if len(self.s3_bucket) < 3:
            problems.append("the S3 bucket name needs at least 3 characters")
        if self.image_format not in ("png", "jpeg", "jpg", "webp"):
            problems.append(f"image format must be png, jpeg or webp, got {self.image_format!r}")
        if any(WARM_SIZE.fullmatch(size) is None for size in self.warm_sizes):
            problems.append(
                "warm sizes must look like 512x512, 512x512x4 (4 images batched) or 512x512-unguided "
                f"(cfg 1 or less), got {', '.join(self.warm_sizes)}"
            )
        if self.auth not in AUTH_MODES:
            problems.append(f"auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.log_format not in ("json", "text"):
            problems.append("log format must be json or text")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every setting from the environment (``ENV_NAMES``), then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, (variable, coerce) in ENV_NAMES.items():
            raw = env.get(variable)
            if raw is None or (raw == "" and types[name] != "str"):
                continue
            try:
                values[name] = coerce(raw)
            except ValueError as err:
                raise ConfigError(f"{variable}: {err}") from err
        values.update(overrides)
        return cls(**values)


def parse_bytes(value: str) -> int:
    """A size in bytes: a whole number, or one with ``K``, ``M``, ``G`` or ``T`` (powers of 1024)."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1024 ** ("KMGT".index(text[-1]) + 1) if text and text[-1] in "KMGT" else 1
    number = float(text[:-1] if scale > 1 else text)
    if number <= 0:
        raise ValueError(f"must be a positive size, got {value}")
    return int(number * scale)


def _opt_str(value: str) -> str | None:
    return value or None


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(part) for part in parse_list(value))


def _positive(coerce: Callable[[str], T]) -> Callable[[str], T]:
    def read(value: str) -> T:
        number = coerce(value)
        if number <= 0:  # type: ignore[operator]
            raise ValueError(f"must be positive, got {value}")
        return number

    return read


#: field name -> (environment variable, coercer)
ENV_NAMES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "database_url": ("DATABASE_URL", str),
    "s3_endpoint": ("S3_ENDPOINT", str),
    "s3_access_key": ("S3_ACCESS_KEY", str),
    "s3_secret_key": ("S3_SECRET_KEY", str),
    "s3_bucket": ("S3_BUCKET", str),
    "s3_region": ("S3_REGION", str),
    "s3_presign": ("S3_PRESIGN", parse_bool),
    "host": ("ONNX_WEB_HOST", str),
    "port": ("ONNX_WEB_PORT", int),
    "api_workers": ("ONNX_WEB_API_WORKERS", _positive(int)),
    "api_threads": ("ONNX_WEB_API_THREADS", _positive(int)),
    "api_keepalive_s": ("ONNX_WEB_API_KEEPALIVE_S", _positive(int)),
    "db_pool_size": ("ONNX_WEB_DB_POOL_SIZE", _positive(int)),
    "db_max_overflow": ("ONNX_WEB_DB_MAX_OVERFLOW", int),
    "worker_metrics_port": ("ONNX_WEB_WORKER_METRICS_PORT", int),
    "models_path": ("ONNX_WEB_MODEL_PATH", Path),
    "bundle_path": ("ONNX_WEB_BUNDLE_PATH", Path),
    "params_path": ("ONNX_WEB_PARAMS_PATH", Path),
    "extra_models": ("ONNX_WEB_EXTRA_MODELS", _paths),
    "cors_origins": ("ONNX_WEB_CORS_ORIGIN", parse_list),
    "auth": ("ONNX_WEB_AUTH", str),
    "callback_secret": ("ONNX_WEB_CALLBACK_SECRET", _opt_str),
    "callback_allow_private": ("ONNX_WEB_CALLBACK_ALLOW_PRIVATE", parse_bool),
    "any_platform": ("ONNX_WEB_ANY_PLATFORM", parse_bool),
    "block_platforms": ("ONNX_WEB_BLOCK_PLATFORMS", parse_list),
    "default_platform": ("ONNX_WEB_DEFAULT_PLATFORM", _opt_str),
    "image_format": ("ONNX_WEB_IMAGE_FORMAT", str),
    "thumbnail_size": ("ONNX_WEB_THUMBNAIL_SIZE", _positive(int)),
    "server_version": ("ONNX_WEB_SERVER_VERSION", str),
    "admin_token": ("ONNX_WEB_ADMIN_TOKEN", str),
    "feature_flags": ("ONNX_WEB_FEATURE_FLAGS", parse_list),
    "max_body_bytes": ("ONNX_WEB_MAX_BODY_BYTES", _positive(int)),
    "max_image_pixels": ("ONNX_WEB_MAX_IMAGE_PIXELS", _positive(int)),
    "max_output_pixels": ("ONNX_WEB_MAX_OUTPUT_PIXELS", _positive(int)),
    "worker_id": ("ONNX_WEB_WORKER_ID", str),
    "worker_platform": ("ONNX_WEB_WORKER_PLATFORM", str),
    "device": ("ONNX_WEB_DEVICE", int),
    "cuda_fuse_conv_bias": ("ONNX_WEB_CUDA_FUSE_CONV_BIAS", parse_bool_or_auto),
    "worker_memory": ("ONNX_WEB_WORKER_MEMORY", parse_bytes),
    "max_job_memory": ("ONNX_WEB_MAX_JOB_MEMORY", parse_bytes),
    "cache_models": ("ONNX_WEB_CACHE_MODELS", int),
    "model_cache_path": ("ONNX_WEB_MODEL_CACHE", Path),
    "model_cache_bytes": ("ONNX_WEB_MODEL_CACHE_BYTES", parse_bytes),
    "warm_models": ("ONNX_WEB_WARM_MODELS", parse_list),
    "warm_sizes": ("ONNX_WEB_WARM_SIZES", parse_list),
    "max_attempts": ("ONNX_WEB_WORKER_RETRIES", _positive(int)),
    "retry_delay_s": ("ONNX_WEB_RETRY_DELAY_S", float),
    "retry_delay_max_s": ("ONNX_WEB_RETRY_DELAY_MAX_S", float),
    "job_timeout_s": ("ONNX_WEB_JOB_TIMEOUT_S", float),
    "job_stuck_s": ("ONNX_WEB_JOB_STUCK_S", float),
    "batch_max": ("ONNX_WEB_BATCH_MAX", _positive(int)),
    "upload_depth": ("ONNX_WEB_UPLOAD_DEPTH", int),
    "gc_input_age_s": ("ONNX_WEB_GC_INPUT_AGE_S", float),
    "lease_s": ("ONNX_WEB_LEASE_S", _positive(float)),
    "heartbeat_s": ("ONNX_WEB_HEARTBEAT_S", _positive(float)),
    "rescue_interval_s": ("ONNX_WEB_RESCUE_INTERVAL_S", _positive(float)),
    "poll_interval_s": ("ONNX_WEB_POLL_INTERVAL_S", _positive(float)),
    "progress_interval_s": ("ONNX_WEB_PROGRESS_INTERVAL_S", _positive(float)),
    "affinity_window_s": ("ONNX_WEB_AFFINITY_WINDOW_S", float),
    "shutdown_grace_s": ("ONNX_WEB_SHUTDOWN_GRACE_S", _positive(float)),
    "preview_interval_s": ("ONNX_WEB_PREVIEW_INTERVAL_S", float),
    "preview_max_side": ("ONNX_WEB_PREVIEW_SIZE", _positive(int)),
    "source_url_max_bytes": ("ONNX_WEB_SOURCE_URL_MAX_BYTES", _positive(int)),
    "source_url_timeout_s": ("ONNX_WEB_SOURCE_URL_TIMEOUT_S", _positive(float)),
    "import_path": ("ONNX_WEB_IMPORT_PATH", Path),
    "download_max_bytes": ("ONNX_WEB_DOWNLOAD_MAX_BYTES", parse_bytes),
    "allow_pickle": ("ONNX_WEB_ALLOW_PICKLE", parse_bool),
    "civitai_token": ("ONNX_WEB_CIVITAI_TOKEN", _opt_str),
    "civitai_root": ("ONNX_WEB_CIVITAI_ROOT", str),
    "hf_endpoint": ("HF_ENDPOINT", _opt_str),
    "convert_variants": ("ONNX_WEB_CONVERT_VARIANTS", parse_list),
    "log_level": ("ONNX_WEB_LOG_LEVEL", str.upper),
    "log_format": ("ONNX_WEB_LOG_FORMAT", str),
}

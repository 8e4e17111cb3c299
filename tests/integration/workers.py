"""Real workers for integration tests: processes to start, signal and read the JSON logs of, an
in-process worker loop, and the jobs they run.

Each ``WorkerProcess`` is ``python -m service.cli worker`` configured only through the
environment, as in production, with its stderr (one JSON object a line) going to a file the test
reads. Timings are shortened (``FAST``) so that a lease runs out in seconds. A test that needs no
second process runs ``run_worker_in_process`` instead: the same ``Worker`` loop, built from a
``Config`` directly. Jobs are built the way the api builds them (``parse_request`` +
``build_txt2img``) but may be 64x64, below the api's minimum size, so that inference takes
milliseconds per step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from minio import Minio
from PIL import Image

from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import CPU_PROVIDER, SessionCache, SessionSettings
from service.chains import build_txt2img
from service.config import Config
from service.jobs.notify import Notifier
from service.jobs.store import JobStore, NewJob
from service.modelstore import ModelCache
from service.names import job_name
from service.params import load_params_doc, parse_request
from service.stack import S3Credentials
from service.storage import ObjectStore, parse_endpoint
from service.worker import Worker
from tests.fixtures.s3 import FaultyProxy

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The only model a recovery job needs (``pipelines.models.demo.DEMO_MODELS[0]``).
DEMO_MODEL = "stable-diffusion-onnx-v1-5"
#: Generous: two workers importing onnxruntime at once on two busy cores take a few seconds.
START_TIMEOUT_S = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class Timings:
    """The worker's clock settings; the defaults are the shortened ones every recovery test uses."""

    lease_s: float = 3.0
    heartbeat_s: float = 0.5
    rescue_interval_s: float = 0.5
    poll_interval_s: float = 0.2
    #: The backoff before a failed job may be claimed again (doubling with each attempt).
    retry_delay_s: float = 0.2
    #: None keeps the worker's default (``config.PROGRESS_INTERVAL_S``).
    progress_interval_s: float | None = None

    def env(self) -> dict[str, str]:
        values = {
            "ONNX_WEB_LEASE_S": str(self.lease_s),
            "ONNX_WEB_HEARTBEAT_S": str(self.heartbeat_s),
            "ONNX_WEB_RESCUE_INTERVAL_S": str(self.rescue_interval_s),
            "ONNX_WEB_POLL_INTERVAL_S": str(self.poll_interval_s),
            "ONNX_WEB_RETRY_DELAY_S": str(self.retry_delay_s),
        }
        if self.progress_interval_s is not None:
            values["ONNX_WEB_PROGRESS_INTERVAL_S"] = str(self.progress_interval_s)
        return values


FAST = Timings()


def wait_until(
    condition: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy and return that; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class WorkerProcess:
    """One ``onnx-web worker`` child process and its log."""

    def __init__(
        self, worker_id: str, env: Mapping[str, str], log_path: Path, *, address_space: int | None = None
    ) -> None:
        self.worker_id = worker_id
        self.log_path = log_path
        self._log_file = log_path.open("wb")

        def limit_memory() -> None:
            if address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            env=dict(env),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            preexec_fn=limit_memory,
        )
        #: ``time.time()`` when ``wait_exit`` first saw the process gone.
        self.exited_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """Every log line so far, parsed; a line that is not JSON (a traceback) comes as ``{"raw": line}``."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            entries.append(entry if isinstance(entry, dict) else {"raw": line})
        return entries

    def log_entries(self, **match: Any) -> list[dict[str, Any]]:
        """The log entries whose keys have all the given values (e.g. ``action="fenced"``)."""
        return [entry for entry in self.logs() if all(entry.get(k) == v for k, v in match.items())]

    def wait_for_log(self, timeout_s: float = START_TIMEOUT_S, **match: Any) -> dict[str, Any]:
        """The first log entry matching ``match``, waiting for it; fails early if the process exits."""

        def found() -> dict[str, Any] | None:
            entries = self.log_entries(**match)
            if entries:
                return entries[0]
            if self.process.poll() is not None:
                # Read once more: the line may have been written just before the exit.
                entries = self.log_entries(**match)
                if entries:
                    return entries[0]
                raise AssertionError(
                    f"worker {self.worker_id} exited ({self.process.returncode}) "
                    f"without logging {match}:\n{self.tail()}"
                )
            return None

        return wait_until(found, timeout_s=timeout_s, what=f"{self.worker_id} to log {match}")

    def wait_started(self) -> None:
        """Wait until the worker runs its claim loop (its maintenance thread is up too)."""
        self.wait_for_log(action="start")

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def poll(self) -> int | None:
        """The exit code if the process is gone (recording ``exited_at`` the first time), else None."""
        code = self.process.poll()
        if code is not None and self.exited_at is None:
            self.exited_at = time.time()
        return code

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code, waiting at most ``timeout_s``; records ``exited_at``."""
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"worker {self.worker_id} still running after {timeout_s}s:\n{self.tail()}"
            ) from err
        if self.exited_at is None:
            self.exited_at = time.time()
        return code

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """Make sure the process is gone (a stopped one is continued first, so it can die)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self._log_file.close()


class Workers:
    """Starts workers against one test's database, bucket and models; kills leftovers at the end."""

    def __init__(
        self, *, database_url: str, s3: S3Credentials, bucket: str, models: Path, log_dir: Path
    ) -> None:
        self.database_url = database_url
        self.s3 = s3
        self.bucket = bucket
        self.models = models
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def env(self, worker_id: str, timings: Timings, **overrides: str) -> dict[str, str]:
        """The environment of one worker process (everything ``Config.from_env`` reads)."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ONNX_WEB_", "S3_")) and k != "DATABASE_URL"
        }
        return {
            **base,
            "DATABASE_URL": self.database_url,
            "S3_ENDPOINT": self.s3.endpoint,
            "S3_ACCESS_KEY": self.s3.access_key,
            "S3_SECRET_KEY": self.s3.secret_key,
            "S3_BUCKET": self.bucket,
            "ONNX_WEB_MODEL_PATH": str(self.models),
            "ONNX_WEB_WORKER_ID": worker_id,
            "ONNX_WEB_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **timings.env(),
            **overrides,
        }

    def start(
        self,
        worker_id: str,
        *,
        timings: Timings = FAST,
        address_space: int | None = None,
        **overrides: str,
    ) -> WorkerProcess:
        """Start one worker (``overrides`` are extra environment variables, e.g. the fault point;
        ``address_space`` caps its virtual memory, so a large allocation fails as on a full device)."""
        worker = WorkerProcess(
            worker_id,
            self.env(worker_id, timings, **overrides),
            self.log_dir / f"{worker_id}.log",
            address_space=address_space,
        )
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()


# -- in process ----------------------------------------------------------------------------------


def cpu_sessions(max_models: int = 1) -> SessionCache:
    """A session cache on the CPU provider only, so results do not depend on the machine's device."""
    return SessionCache(max_models, SessionSettings(providers=(CPU_PROVIDER,)))


def run_worker_in_process(
    database_url: str,
    jobs: JobStore,
    store: ObjectStore,
    models: Path,
    *,
    worker_id: str,
    max_jobs: int,
    sessions: SessionCache | None = None,
    model_cache: ModelCache | None = None,
    **config: Any,
) -> None:
    """Run one ``Worker`` loop in this process until it has taken ``max_jobs`` jobs.

    By default it heartbeats and polls every 50 ms and writes progress on every step, so that a
    test spends no time on the production intervals and sees every step; ``config`` is the rest of
    the test's ``Config`` (and may change those intervals). ``sessions`` (by default a fresh
    one-model cache) is the caller's when it must outlive the worker or be wired to
    ``model_cache``'s evictions.
    """
    intervals: dict[str, Any] = {"heartbeat_s": 0.05, "progress_interval_s": 0.0, "poll_interval_s": 0.05}
    settings = Config(
        database_url=database_url,
        models_path=models,
        worker_id=worker_id,
        **{**intervals, **config},
    )
    with closing(Notifier(database_url)) as notifier:
        Worker(
            settings,
            jobs=jobs,
            store=store,
            sessions=cpu_sessions() if sessions is None else sessions,
            notifier=notifier,
            model_cache=model_cache,
        ).run(max_jobs=max_jobs)


# -- jobs ----------------------------------------------------------------------------------------


def make_job(
    models: Path,
    *,
    steps: int,
    size: int = 64,
    seed: int = 7,
    max_attempts: int = 3,
    platform: str | None = None,
    prompt: str = "a red fox in the snow",
    model: str | None = None,
) -> NewJob:
    """A txt2img job resolved as the api resolves it, but allowed below the api's 128 px minimum."""
    config = Config(models_path=models)
    doc = load_params_doc(config)
    for side in ("width", "height"):
        doc[side] = {**doc[side], "min": min(size, doc[side]["min"])}
    request = parse_request(
        "txt2img",
        {
            "prompt": prompt,
            "steps": steps,
            "width": size,
            "height": size,
            "seed": seed,
            **({"model": model} if model else {}),
        },
        params_doc=doc,
        registry=ModelRegistry(models, ()),
        config=config,
        rng=random.Random(seed),
    )
    built = build_txt2img(request, image_format="png", thumbnail_size=32)
    job_id = uuid.uuid4()
    return NewJob(
        id=job_id,
        name=job_name(built.kind, request, job_id),
        kind=built.kind,
        chain=built.chain,
        model=built.model or request.image.model,
        platform=platform,
        max_attempts=max_attempts,
        steps_total=built.steps_total,
        stages_total=built.stages_total,
    )


def job_row(engine: sqlalchemy.Engine, name: str) -> dict[str, Any]:
    """Every column of job ``name`` as stored."""
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.text("SELECT * FROM jobs WHERE name = :name"), {"name": name}).one()
    return dict(row._mapping)


def worker_row_exists(engine: sqlalchemy.Engine, worker_id: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            sqlalchemy.text("SELECT 1 FROM workers WHERE id = :id"), {"id": worker_id}
        ).first()
    return found is not None


# -- the bucket ----------------------------------------------------------------------------------


class Bucket:
    """Direct reads of the test's bucket, bypassing the service's code (what is really there)."""

    def __init__(self, s3: S3Credentials, bucket: str) -> None:
        endpoint, secure = parse_endpoint(s3.endpoint)
        self._client = Minio(endpoint, s3.access_key, s3.secret_key, secure=secure)
        self.bucket = bucket

    def keys(self, prefix: str) -> list[str]:
        return sorted(
            str(found.object_name)
            for found in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        )

    def read(self, key: str) -> bytes:
        response = self._client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(self.bucket, key, io.BytesIO(data), len(data))


class SeveringProxy(FaultyProxy):
    """A ``FaultyProxy`` that can also sever the connections it forwards.

    A worker keeps its S3 connection alive between requests, so faults queued for new connections
    would never reach it; severing its pooled connection makes its next request open a new one,
    which takes the next queued fault.
    """

    def __init__(self, upstream: str) -> None:
        self._open: set[socket.socket] = set()
        super().__init__(upstream)

    def sever(self) -> int:
        """Shut down every forwarded connection (the client sees it closed); returns how many."""
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            # shutdown, not close: the forwarding thread still owns the socket and closes it itself.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(open_now)

    def _forward(self, client: socket.socket, upstream: socket.socket, *, cut_after: int | None) -> None:
        with self._lock:
            self._open.add(client)
        try:
            super()._forward(client, upstream, cut_after=cut_after)
        finally:
            with self._lock:
                self._open.discard(client)


def decoded_outputs(bucket: Bucket, output_keys: Mapping[str, str]) -> Iterator[tuple[str, Any]]:
    """Each recorded file read back from the bucket and decoded: images as PIL images, sidecars as JSON."""
    for name, key in sorted(output_keys.items()):
        data = bucket.read(key)
        if name.endswith(".json"):
            yield name, json.loads(data)
        else:
            image = Image.open(io.BytesIO(data))
            image.load()
            yield name, image

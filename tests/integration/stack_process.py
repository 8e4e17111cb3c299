"""A real ``onnx-web run`` in a subprocess: start it, find its children, signal it, list leftovers.

``RunningStack`` starts ``python -m service.cli run`` as the leader of a process group of its own,
as a shell with job control or systemd would, so a test can signal the whole group. Its output,
and its children's (JSON log lines: ``ONNX_WEB_LOG_FORMAT=json``), goes to one file. The services'
settings come from ``DATA_DIR/stack.json``, which the launcher writes once they are up.

``leftovers`` lists every process still working on a data folder: the launcher, the weed server
(``-dir=`` under it), postgres (its working directory is the data folder) and any child seen
while the stack ran. The lifecycle tests and ``scripts/chaos.py`` share these helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from service.stack import STATE_FILE, free_port, pg_ctl

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Four python processes importing onnxruntime on two busy cores, plus Postgres and weed.
START_TIMEOUT_S = 180.0
TERMINAL = ("success", "failed", "cancelled")


class RunningStack:
    """One ``onnx-web run`` process group and its log."""

    def __init__(
        self,
        data_dir: Path,
        *,
        models: Path,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ONNX_WEB_", "S3_"))}
        base.pop("DATABASE_URL", None)
        command = [
            *(sys.executable, "-m", "service.cli", "run"),
            *("--port", str(self.port), "--data-dir", str(data_dir), "--models", str(models)),
            *("--workers", str(workers), "--no-demo"),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**base, "ONNX_WEB_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        #: (pid, create time) of every descendant seen, to find the ones that outlive the launcher.
        self.seen: set[tuple[int, float]] = set()

    @property
    def pid(self) -> int:
        return self.process.pid

    # -- its state -------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the api answers ``/readyz`` and ``stack.json`` names the services."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"onnx-web run exited ({self.process.returncode}):\n{self.tail()}")
            if "env" in self.state() and self.answers():
                self.descendants()
                return
            time.sleep(0.3)
        raise AssertionError(f"onnx-web run not ready after {timeout_s}s:\n{self.tail()}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                return True
        except OSError:
            return False

    def state(self) -> dict[str, Any]:
        """``stack.json``: the launcher's pid, the api URL and (once up) the services' settings."""
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def services(self) -> dict[str, str]:
        """``DATABASE_URL``, ``S3_*`` and ``ONNX_WEB_MODEL_PATH`` of the running services."""
        return dict(self.state()["env"])

    def descendants(self) -> list[psutil.Process]:
        """The launcher's live descendants (recorded in ``seen``)."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for process in found:
            try:
                self.seen.add((process.pid, process.create_time()))
            except psutil.NoSuchProcess:
                continue
        return found

    def children_running(self, *words: str) -> list[psutil.Process]:
        """Direct children whose command line contains every one of ``words`` (and are not stopped)."""
        found = []
        for process in self.descendants():
            try:
                if process.ppid() == self.pid and all(w in process.cmdline() for w in words):
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
        return found

    def workers(self) -> list[psutil.Process]:
        return self.children_running("service.cli", "worker")

    def api(self) -> psutil.Process:
        """The gunicorn master (``onnx-web api`` execs gunicorn)."""
        return self.only_child_running("gunicorn")

    def weed(self) -> psutil.Process:
        return self.only_child_running("server", f"-dir={self.data_dir / 's3'}")

    def only_child_running(self, *words: str, timeout_s: float = 15.0) -> psutil.Process:
        """The one direct child matching ``words``, waiting while the supervisor restarts it."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.children_running(*words)
            if len(found) == 1 or time.monotonic() > deadline:
                assert len(found) == 1, (words, found)
                return found[0]
            time.sleep(0.2)

    # -- its log ---------------------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (gunicorn's own text lines are skipped)."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries

    def log_entries(self, **match: Any) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if all(entry.get(k) == v for k, v in match.items())]

    def wait_for_log(self, count: int = 1, timeout_s: float = 60.0, **match: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` entries match ``match``; returns them."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.log_entries(**match)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} log lines matching {match} in {timeout_s}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- stopping it -----------------------------------------------------------------------------

    def signal_group(self, signum: signal.Signals) -> None:
        self.descendants()
        with contextlib.suppress(ProcessLookupError):  # the group is gone with its members
            os.killpg(self.pid, signum)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"onnx-web run still running after {timeout_s}s:\n{self.tail()}") from err

    def close(self) -> None:
        """Make sure nothing of this stack is left, whatever the test did."""
        if self.process.poll() is None:
            self.descendants()
            self.process.kill()
            self.process.wait()
        for process in leftovers(self.data_dir, self.seen):
            process.kill()
        psutil.wait_procs(leftovers(self.data_dir, self.seen), timeout=10)


def leftovers(data_dir: Path, seen: Collection[tuple[int, float]] = ()) -> list[psutil.Process]:
    """Processes still working on ``data_dir``: by command line, working directory, or as a child seen."""
    root = str(data_dir)
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "create_time", "status"]):
        info = process.info
        mentions = any(root in part for part in info["cmdline"] or ())
        works_there = (info["cwd"] or "").startswith(root)
        ours = mentions or works_there or (process.pid, info["create_time"]) in seen
        if ours and process.pid != os.getpid() and info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid}: {' '.join(process.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            continue
    return "\n".join(lines)


# -- jobs through the api --------------------------------------------------------------------------


def submit(client: httpx.Client, *, steps: int = 4, seed: int = 1, key: str | None = None) -> str:
    """POST a 128x128 txt2img job (the api's smallest size); returns its name."""
    headers = {"Idempotency-Key": key} if key else {}
    body = {"prompt": "a red fox in the snow", "steps": steps, "width": 128, "height": 128, "seed": seed}
    response = client.post("/api/txt2img", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["name"])


def wait_job(client: httpx.Client, name: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll a job until it ends; returns its last status record."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get("/api/job/status", params={"jobs": name})
        if response.status_code == 200:
            record = response.json()[0]
            if record["status"] in TERMINAL:
                return record
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not end in {timeout_s}s: {record}")


# -- Postgres outages ------------------------------------------------------------------------------


def pg_stop(datadir: Path) -> None:
    """Stop the server of ``datadir`` now (fast shutdown: clients are disconnected)."""
    pg_ctl(datadir, "stop", "-m", "fast", "-w")


def pg_start(datadir: Path) -> None:
    """Start the server of ``datadir`` again with the options it last ran with (``postmaster.opts``)."""
    words = shlex.split((datadir / "postmaster.opts").read_text())
    options = words[words.index("-D") + 2 :]
    pg_ctl(datadir, "start", "-w", "-l", str(datadir / "log"), "-o", shlex.join(options))

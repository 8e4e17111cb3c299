"""``onnx-web run`` before and around its services: a taken port, the admin token of a data folder,
processes that exit for their settings, platformdirs' warning on a machine without
XDG_RUNTIME_DIR, and the api's gunicorn control socket. Nothing here starts Postgres or S3
(``tests/integration`` does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import CONFIG_ERROR_EXIT
from service.stack import (
    ADMIN_TOKEN_FILE,
    LocalStack,
    PortInUse,
    PostgresKeeper,
    RestartPolicy,
    StackOptions,
    Supervised,
    data_dir_admin_token,
    free_port,
    listens_on,
    spawn,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on, on every address (as a server bound to 0.0.0.0 does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- the port -------------------------------------------------------------------------------------


def test_a_taken_port_stops_the_start_before_any_service_starts(taken_port: int, tmp_path: Path) -> None:
    stack = LocalStack(StackOptions(data_dir=tmp_path, port=taken_port, host="127.0.0.1"))

    with pytest.raises(PortInUse, match=f"port {taken_port} is in use on 127.0.0.1"):
        stack.start()

    assert list(tmp_path.iterdir()) == []  # no Postgres, no S3, and the folder's claim let go


def test_readiness_counts_only_when_the_api_itself_listens(taken_port: int) -> None:
    assert listens_on(os.getpid(), taken_port)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not listens_on(other.pid, taken_port)
    finally:
        other.kill()
        other.wait()


# -- the admin token ------------------------------------------------------------------------------


def test_a_data_folder_keeps_one_private_admin_token(tmp_path: Path) -> None:
    first = data_dir_admin_token(tmp_path)

    assert len(first) >= 32 and data_dir_admin_token(tmp_path) == first
    assert (tmp_path / ADMIN_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert data_dir_admin_token(other) != first


def test_an_empty_token_file_gets_a_new_token(tmp_path: Path) -> None:
    (tmp_path / ADMIN_TOKEN_FILE).write_text("")
    assert data_dir_admin_token(tmp_path).strip()


# -- supervision ----------------------------------------------------------------------------------


def exiting(code: int) -> Supervised:
    command = [sys.executable, "-c", f"import sys; sys.exit({code})"]
    return Supervised(f"exits-{code}", lambda: spawn(command), policy=RestartPolicy(backoff_s=0.01))


def tend_until_settled(slot: Supervised, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        slot.tend(time.monotonic())
        time.sleep(0.02)


def test_a_process_stopped_by_its_settings_is_not_restarted() -> None:
    settings, crash = exiting(CONFIG_ERROR_EXIT), exiting(1)
    for slot in (settings, crash):
        slot.start()
        tend_until_settled(slot)
        assert slot.process is not None
        slot.process.wait()  # the last restart's

    assert settings.given_up and settings.restarts == 0
    assert not crash.given_up and crash.restarts > 1


def test_a_process_stopped_by_a_cause_its_cure_removes_is_restarted_once(tmp_path: Path) -> None:
    """Code updated under a running stack: the restarted worker stops on the old schema, the
    supervisor migrates (the cure), and the next start works; a second such stop is given up."""
    marker = tmp_path / "migrated"
    command = [
        sys.executable,
        "-c",
        f"import pathlib, sys, time; sys.exit(2) if not pathlib.Path({str(marker)!r}).exists() "
        "else time.sleep(30)",
    ]
    cures: list[bool] = []

    def cure() -> bool:
        cures.append(not marker.exists())
        marker.touch()
        return cures[-1]

    slot = Supervised("worker", lambda: spawn(command), policy=RestartPolicy(backoff_s=0.01), cure=cure)
    slot.start()
    try:
        tend_until_settled(slot, seconds=1.5)
        assert cures == [True] and slot.restarts == 1 and slot.alive() and not slot.given_up
    finally:
        slot.kill_session()
        assert slot.process is not None
        slot.process.wait()

    again = exiting(CONFIG_ERROR_EXIT)
    again.cure = lambda: True  # says it helped, but the process stops the same way
    again.start()
    tend_until_settled(again, seconds=1.5)
    assert again.process is not None
    again.process.wait()
    assert again.given_up and again.restarts == 1


def test_an_api_stopped_by_its_settings_stops_the_stack(tmp_path: Path) -> None:
    stack = LocalStack(StackOptions(data_dir=tmp_path, port=5099))
    stack.api = exiting(CONFIG_ERROR_EXIT)
    stack.api.start()

    assert stack.supervise() == CONFIG_ERROR_EXIT


# -- XDG_RUNTIME_DIR ------------------------------------------------------------------------------


def test_no_runtime_dir_warning_where_xdg_runtime_dir_is_unset(tmp_path: Path) -> None:
    script = (
        "import pathlib, subprocess\n"
        "from service.stack import pg_ctl\n"
        "try:\n"
        f"    pg_ctl(pathlib.Path({str(tmp_path)!r}), 'status')\n"
        "except subprocess.CalledProcessError:\n"
        "    pass\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}

    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert "XDG_RUNTIME_DIR" not in done.stderr, done.stderr


# -- the api's control socket ---------------------------------------------------------------------


def test_the_api_opens_no_gunicorn_control_socket_another_stack_could_take_over(tmp_path: Path) -> None:
    home, models = tmp_path / "home", tmp_path / "models"
    home.mkdir()
    models.mkdir()
    port, unreachable = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    env |= {
        "HOME": str(home),
        "DATABASE_URL": f"postgresql://nobody:nothing@127.0.0.1:{unreachable}/onnx_web",
        "S3_ENDPOINT": f"http://127.0.0.1:{unreachable}",
        "S3_ACCESS_KEY": "key",
        "S3_SECRET_KEY": "secret",
        "ONNX_WEB_MODEL_PATH": str(models),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    api = subprocess.Popen(
        [*command, "--workers", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not listens_on(api.pid, port) or not _answers(port):
            assert api.poll() is None and time.monotonic() < deadline, "the api did not start"
            time.sleep(0.1)
    finally:
        api.terminate()
        output, _ = api.communicate(timeout=60)

    # Without Postgres the api answers, 503 on readiness: its master has long set up what it sets up.
    assert b"Control socket" not in output, output.decode(errors="replace")
    assert list(home.iterdir()) == []


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


class FailingPostgres:
    """A dead Postgres whose restart takes a while and fails (a start that hangs, then times out)."""

    def __init__(self, takes_s: float) -> None:
        self.takes_s = takes_s
        self.attempts: list[tuple[float, float]] = []

    def running(self) -> int | None:
        return None

    def restart(self) -> None:
        started = time.monotonic()
        time.sleep(self.takes_s)
        self.attempts.append((started, time.monotonic()))
        raise RuntimeError("postgres did not start\nits log ...")


def test_a_postgres_restart_runs_beside_the_supervisor_and_waits_its_backoff_after_failing() -> None:
    postgres = FailingPostgres(takes_s=0.4)
    keeper = PostgresKeeper(postgres, RestartPolicy(backoff_s=0.3, backoff_max_s=0.3))  # type: ignore[arg-type]
    deadline = time.monotonic() + 3.0
    slowest_tend = 0.0
    while time.monotonic() < deadline and len(postgres.attempts) < 3:
        started = time.monotonic()
        keeper.tend(started)
        slowest_tend = max(slowest_tend, time.monotonic() - started)
        time.sleep(0.02)
    keeper.wait()
    assert len(postgres.attempts) >= 3
    # The supervisor is never held by a restart (each takes 0.4 s) ...
    assert slowest_tend < 0.2
    # ... and each try starts its 0.3 s wait only when the one before it has failed.
    for (_, ended), (started, _) in zip(postgres.attempts, postgres.attempts[1:], strict=False):
        assert started - ended >= 0.3

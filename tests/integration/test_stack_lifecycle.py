"""``onnx-web run`` keeps serving when its processes die, stops cleanly, and starts after a hard kill.

Each test drives a real ``onnx-web run`` subprocess (``stack_process.RunningStack``: embedded
Postgres, SeaweedFS, gunicorn, workers on the tiny demo models) and reads its JSON log; the
servers' own leftovers are checked at the process level (``leftovers``). Tests of the two embedded
servers alone (a stale ``postmaster.pid``, a server another live process uses) need no stack.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import urllib3
from minio import Minio

from pipelines.models.demo import build_demo_models
from service.db import libpq_url
from service.stack import (
    POSTGRES_FOLDER,
    EmbeddedPostgres,
    EmbeddedS3,
    RestartPolicy,
    S3Credentials,
    StackInUse,
)
from tests.integration.stack_process import (
    REPO_ROOT,
    RunningStack,
    describe,
    leftovers,
    submit,
    wait_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: What an orderly stop may take at most here: a worker's grace (``STOP_GRACE_S``), the api's
#: drain, two seconds for weed and a few for Postgres, on two busy cores. Generous on purpose.
STOP_BOUND_S = 60.0
#: The workers' grace after SIGTERM, shortened so that a stop mid-job is quick.
STOP_GRACE_S = "5"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_demo_models(folder)
    return folder


@pytest.fixture
def stacks(data_dir: Path, models: Path) -> Iterator[list[RunningStack]]:
    """Start stacks with ``start(...)``; whatever they leave running is killed afterwards."""
    started: list[RunningStack] = []
    yield started
    for stack in started:
        stack.close()


def start(stacks: list[RunningStack], data_dir: Path, models: Path, **options: object) -> RunningStack:
    env = {"ONNX_WEB_SHUTDOWN_GRACE_S": STOP_GRACE_S}
    stack = RunningStack(data_dir, models=models, env=env, **options)  # type: ignore[arg-type]
    stacks.append(stack)
    return stack


# -- supervision ----------------------------------------------------------------------------------


def test_restart_waits_double_while_a_process_keeps_dying_quickly_and_stay_capped() -> None:
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=30.0)
    assert [policy.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(10_000) == 30.0


def test_a_killed_worker_api_and_postgres_are_restarted_and_the_stack_keeps_serving(
    stacks: list[RunningStack], data_dir: Path, models: Path
) -> None:
    stack = start(stacks, data_dir, models)
    stack.wait_ready()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        assert wait_job(client, submit(client, seed=1))["status"] == "success"

        # Three SIGKILLs in a row, each soon after the worker started: each is logged, and the
        # waits before the restarts double.
        for kill in range(1, 4):
            (worker,) = stack.workers()
            worker.send_signal(signal.SIGKILL)
            (death,) = stack.wait_for_log(count=kill, action="process_exit", child="worker-0")[kill - 1 :]
            assert death["pid"] == worker.pid
            assert death["signal"] == "SIGKILL"
            assert death["restart"] == kill
            assert death["level"] == "warning"
            stack.wait_for_log(count=kill, action="process_restart", child="worker-0")
        waits = [e["restart_in_s"] for e in stack.log_entries(action="process_exit", child="worker-0")]
        assert waits[1:] == [waits[0] * 2, waits[0] * 4], waits
        assert wait_job(client, submit(client, seed=2))["status"] == "success"

        gunicorn = stack.api()
        gunicorn.send_signal(signal.SIGKILL)
        (death,) = stack.wait_for_log(action="process_exit", child="api")
        assert (death["pid"], death["signal"], death["restart"]) == (gunicorn.pid, "SIGKILL", 1)
        stack.wait_for_log(action="process_restart", child="api")
        deadline = time.monotonic() + 60
        while not stack.answers():
            assert time.monotonic() < deadline, stack.tail()
            time.sleep(0.3)
        done = submit(client, seed=3)
        assert wait_job(client, done)["status"] == "success"

        # Postgres is no child of the launcher (pg_ctl detaches it): it is watched by its pid.
        postmaster = psutil.Process(
            int((data_dir / POSTGRES_FOLDER / "postmaster.pid").read_text().split()[0])
        )
        postmaster.send_signal(signal.SIGKILL)
        (death,) = stack.wait_for_log(action="process_exit", child="postgres")
        assert (death["pid"], death["restart"], death["level"]) == (postmaster.pid, 1, "warning")
        (restart,) = stack.wait_for_log(action="process_restart", child="postgres")
        assert restart["pid"] != postmaster.pid
        # The api and the workers reconnect by themselves; what was committed before is still there.
        assert wait_job(client, done)["status"] == "success"
        assert wait_job(client, submit(client, seed=4))["status"] == "success"
    assert stack.process.poll() is None, "the launcher must outlive its children"


def test_a_second_run_on_the_same_data_folder_is_refused_and_the_first_keeps_serving(
    stacks: list[RunningStack], data_dir: Path, models: Path
) -> None:
    first = start(stacks, data_dir, models)
    first.wait_ready()
    postmaster = (data_dir / "postgres" / "postmaster.pid").read_text().split()[0]

    second = subprocess.run(
        [sys.executable, "-m", "service.cli", "run", "--data-dir", str(data_dir), "--no-demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert second.returncode != 0
    assert f"in use by onnx-web run pid {first.pid} (" in second.stderr, second.stderr
    assert (data_dir / "postgres" / "postmaster.pid").read_text().split()[0] == postmaster
    with httpx.Client(base_url=first.url, timeout=30) as client:
        assert wait_job(client, submit(client))["status"] == "success"


# -- stopping -------------------------------------------------------------------------------------


def test_sigterm_to_the_process_group_mid_job_stops_everything_in_bounded_time(
    stacks: list[RunningStack], data_dir: Path, models: Path
) -> None:
    stack = start(stacks, data_dir, models)
    stack.wait_ready()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        name = submit(client, steps=300)
        deadline = time.monotonic() + 60
        while wait_status(client, name) != "running":
            assert time.monotonic() < deadline, stack.tail()
            time.sleep(0.1)

    started = time.monotonic()
    stack.signal_group(signal.SIGTERM)
    assert stack.wait_exit(STOP_BOUND_S) == 0
    stopped_in = time.monotonic() - started

    left = psutil.wait_procs(leftovers(data_dir, stack.seen), timeout=5)[1]
    assert not left, f"left running:\n{describe(left)}"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "stack.json").exists()
    (summary,) = stack.log_entries(action="job_summary", job=name)
    assert summary["outcome"] in ("success", "released"), summary
    assert stack.log_entries(action="stack_stop")[0]["cause"] == "SIGTERM"
    assert stopped_in < STOP_BOUND_S


def test_a_stop_during_start_up_leaves_no_process_behind(
    stacks: list[RunningStack], data_dir: Path, models: Path
) -> None:
    stack = start(stacks, data_dir, models)
    pid_file = data_dir / "postgres" / "postmaster.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline and stack.process.poll() is None, stack.tail()
        time.sleep(0.02)

    stack.signal_group(signal.SIGTERM)

    assert stack.wait_exit(STOP_BOUND_S) == 0
    left = psutil.wait_procs(leftovers(data_dir, stack.seen), timeout=5)[1]
    assert not left, f"left running:\n{describe(left)}"


# -- starting after a hard kill -------------------------------------------------------------------


def test_a_run_starts_on_the_data_of_a_process_group_killed_with_sigkill(
    stacks: list[RunningStack], data_dir: Path, models: Path
) -> None:
    first = start(stacks, data_dir, models)
    first.wait_ready()
    with httpx.Client(base_url=first.url, timeout=30) as client:
        before = wait_job(client, submit(client, seed=11))
    first.signal_group(signal.SIGKILL)
    first.wait_exit(10)

    second = start(stacks, data_dir, models)
    second.wait_ready()
    with httpx.Client(base_url=second.url, timeout=30) as client:
        assert client.get(f"/output/{before['outputs'][0]}").status_code == 200
        assert wait_job(client, submit(client, seed=12))["status"] == "success"

    second.signal_group(signal.SIGTERM)
    assert second.wait_exit(STOP_BOUND_S) == 0
    left = psutil.wait_procs(leftovers(data_dir, first.seen | second.seen), timeout=5)[1]
    assert not left, f"left running:\n{describe(left)}"


def test_a_stale_postmaster_pid_naming_another_live_process_is_cleared(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir / "postgres")
    server.start()
    server.stop()
    pid_file = data_dir / "postgres" / "postmaster.pid"
    stranger = subprocess.Popen(["sleep", "120"])  # the pid a killed postmaster's file now names
    try:
        socket_dir = data_dir / "postgres"
        fields = [stranger.pid, socket_dir, 1700000000, 5432, socket_dir, "", "1 2", "ready"]
        pid_file.write_text("".join(f"{value}\n" for value in fields))

        url = server.start()
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert stranger.poll() is None, "the process the stale file named must be left alone"
    finally:
        server.stop()
        stranger.kill()
        stranger.wait()


def test_stopping_a_postgres_that_another_live_process_uses_leaves_it_running(data_dir: Path) -> None:
    other = _python_holding(f"EmbeddedPostgres(Path({str(data_dir / 'postgres')!r}))")
    try:
        ours = EmbeddedPostgres(data_dir / "postgres")
        url = ours.start()
        ours.stop()
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        other.communicate(timeout=60)  # its stdin closes: it stops its server and exits
    assert not (data_dir / "postgres" / "postmaster.pid").exists(), "its last user stops it"


def test_a_pinned_postgres_runs_its_existing_and_later_backends_on_the_given_cores(data_dir: Path) -> None:
    core = sorted(os.sched_getaffinity(0))[-1]
    server = EmbeddedPostgres(data_dir / "postgres")
    url = server.start()
    try:
        assert server.pin([core]) >= 2, "the postmaster and its background processes"
        with psycopg.connect(libpq_url(url)) as conn:  # forked after the pin
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            backend = psutil.Process(row[0])
            postmaster = backend.parent()
            assert backend.cpu_affinity() == [core]
            assert postmaster is not None and postmaster.cpu_affinity() == [core]
            assert all(child.cpu_affinity() == [core] for child in postmaster.children())
    finally:
        server.stop()


def test_a_weed_server_of_a_live_owner_is_named_and_one_left_by_a_dead_owner_is_replaced(
    data_dir: Path,
) -> None:
    folder = data_dir / "s3"
    owner = _python_holding(f"EmbeddedS3(Path({str(folder)!r}))")
    try:
        with pytest.raises(StackInUse, match=rf"started by pid {owner.pid} \(.*python"):
            EmbeddedS3(folder).start()
        owner.kill()  # its weed server is left without an owner
        owner.communicate()
        ours = EmbeddedS3(folder)
        try:
            ours.start()
            assert ours.process is not None and ours.process.poll() is None
        finally:
            ours.stop()
    finally:
        owner.kill()
        owner.communicate()
    left = psutil.wait_procs(leftovers(folder), timeout=10)[1]
    assert not left, f"left running:\n{describe(left)}"


def test_a_weed_server_restarted_after_sigkill_serves_stored_objects_as_soon_as_it_is_ready(
    data_dir: Path,
) -> None:
    """The filer answers bucket calls seconds before the volumes are registered; start() waits."""
    folder = data_dir / "s3"
    # Larger than what the filer keeps inline, so reading it needs the volume server.
    payload = secrets.token_bytes(256 * 1024)
    first = EmbeddedS3(folder)
    client = _minio(first.start())
    client.make_bucket("outputs")
    client.put_object("outputs", "kept.bin", io.BytesIO(payload), len(payload))
    assert first.process is not None
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)

    second = EmbeddedS3(folder)
    try:
        client = _minio(second.start())
        response = client.get_object("outputs", "kept.bin")
        try:
            assert response.read() == payload
        finally:
            response.close()
            response.release_conn()
    finally:
        second.stop()


def _minio(credentials: S3Credentials) -> Minio:
    """A client without retries of its own: the first answer is the one checked."""
    return Minio(
        credentials.endpoint,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        secure=False,
        http_client=urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=10)),
    )


def wait_status(client: httpx.Client, name: str) -> str:
    return str(client.get("/api/job/status", params={"jobs": name}).json()[0]["status"])


def _python_holding(server: str) -> subprocess.Popen[str]:
    """A python process that starts ``server`` (an expression), then holds it until its stdin closes."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom service.stack import EmbeddedPostgres, EmbeddedS3\n"
        f"server = {server}\nserver.start()\nprint('up', flush=True)\nsys.stdin.read()\nserver.stop()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "up"
    return process

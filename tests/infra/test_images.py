"""The Containerfile's images, checked without building them (see ``tests.infra.images``), and the
workers' healthcheck script run against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.infra.images import (
    CONTAINERFILE,
    CUDA_REQUIREMENTS,
    REPO,
    containerfile_problems,
    pinned_requirement,
    pyproject_pin,
    stages,
)

HEALTHCHECK = REPO / "infra" / "worker_healthcheck.py"


@pytest.fixture(scope="module")
def containerfile() -> str:
    return CONTAINERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return {
        "ort_gpu": pinned_requirement(CUDA_REQUIREMENTS, "onnxruntime-gpu")[0],
        "torch": pyproject_pin("worker", "torch"),
    }


def test_containerfile_keeps_every_rule(containerfile: str, pins: dict[str, str]) -> None:
    assert containerfile_problems(containerfile, **pins) == []


def test_the_three_roles_are_runnable_targets(containerfile: str) -> None:
    found = stages(containerfile)
    assert {"api", "worker-cpu", "worker-cuda"} <= found.keys()


def test_onnxruntime_gpu_is_pinned_with_a_hash() -> None:
    version, hashed = pinned_requirement(CUDA_REQUIREMENTS, "onnxruntime-gpu")
    assert version.count(".") == 2
    assert hashed, "pip --require-hashes needs the hash on the line"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # The bug this check was written for: a CUDA 12 base under CUDA 13 wheels.
        (
            "cuda:13.0.3-cudnn-runtime",
            "cuda:12.8.1-cudnn-runtime",
            "built for CUDA 13.x, the base image has CUDA 12.8",
        ),
        ("cuda:13.0.3-cudnn-runtime", "cuda:13.0.3-runtime", "needs cuDNN 9, the base image has cuDNN None"),
        (
            "cuda:13.0.3-cudnn-runtime",
            "cuda:13.0.3-cudnn8-runtime",
            "needs cuDNN 9, the base image has cuDNN 8",
        ),
        ("python:3.12.12-slim-bookworm", "python:3.12-slim-bookworm", "is not a registry image pinned"),
        (
            "docker.io/library/node:20.20.2-bookworm-slim",
            "node:20.20.2-bookworm-slim",
            "not a registry image",
        ),
        ("node:20.20.2-bookworm-slim", "node:latest", "is not a registry image pinned"),
        ("USER 10001:10001\nEXPOSE", "USER root\nEXPOSE", "api: runs as root"),
        ("USER 10001:10001\nEXPOSE", "USER onnxweb\nEXPOSE", "api: runs as onnxweb"),
        ("USER 10001:10001\nEXPOSE", "EXPOSE", "api: runs as root (no USER)"),
        (
            "HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD",
            "LABEL x=1",
            "worker-cpu: no HEALTHCHECK",
        ),
        (
            "--require-hashes -r requirements/worker-cuda.txt",
            "onnxruntime-gpu",
            "worker-cuda.txt with hashes",
        ),
    ],
)
def test_containerfile_check_catches(
    containerfile: str, pins: dict[str, str], old: str, new: str, expected: str
) -> None:
    assert old in containerfile
    broken = containerfile.replace(old, new, 1)
    assert any(expected in problem for problem in containerfile_problems(broken, **pins))


def test_an_unknown_wheel_version_must_be_looked_up(containerfile: str, pins: dict[str, str]) -> None:
    problems = containerfile_problems(containerfile, **{**pins, "ort_gpu": "9.9.9"})
    assert problems == ["onnxruntime-gpu 9.9.9 has no row in tests/infra/cuda_matrix.py"]


def _probe(pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), str(pid)], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def fake_worker() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line reads like `onnx-web worker`, as the container's PID 1 does."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "worker"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_worker_healthcheck_passes_a_running_worker(fake_worker: subprocess.Popen[bytes]) -> None:
    result = _probe(fake_worker.pid)
    assert result.returncode == 0, result.stderr


def test_worker_healthcheck_fails_a_stopped_worker(fake_worker: subprocess.Popen[bytes]) -> None:
    fake_worker.send_signal(signal.SIGSTOP)
    os.waitpid(fake_worker.pid, os.WUNTRACED)  # returns once the kernel has stopped it
    try:
        result = _probe(fake_worker.pid)
    finally:
        fake_worker.send_signal(signal.SIGCONT)
    assert result.returncode == 1
    assert "is stopped" in result.stderr


def test_worker_healthcheck_fails_a_process_that_is_not_a_worker() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            result = _probe(other.pid)
        finally:
            other.kill()
    assert result.returncode == 1
    assert "is not a worker" in result.stderr


def test_worker_healthcheck_fails_when_the_worker_is_gone(fake_worker: subprocess.Popen[bytes]) -> None:
    fake_worker.kill()
    fake_worker.wait()
    result = _probe(fake_worker.pid)
    assert result.returncode == 1
    assert "no process" in result.stderr

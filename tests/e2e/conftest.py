"""The whole stack as ``onnx-web run`` starts it: embedded Postgres, SeaweedFS, gunicorn, a worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.stack import LocalStack, StackOptions, free_port

TERMINAL = {"success", "failed", "cancelled"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data = tmp_path_factory.mktemp("stack")
    local = LocalStack(StackOptions(data_dir=data, port=free_port(), models_path=data / "models"))
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


def wait_for(
    client: httpx.Client, name: str, *, until: Callable[[dict[str, Any]], bool], timeout_s: float = 180.0
) -> list[dict[str, Any]]:
    """Poll a job's status until ``until(record)``; returns every record seen (the last satisfies it)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/api/job/status", params={"jobs": name})
        assert response.status_code == 200, response.text
        record = response.json()[0]
        seen.append(record)
        if until(record):
            return seen
        time.sleep(0.05)
    raise AssertionError(
        f"job {name} did not get there in {timeout_s}s; last record: {seen[-1] if seen else None}"
    )


def finished(record: dict[str, Any]) -> bool:
    return record["status"] in TERMINAL


def models_dir(stack: LocalStack) -> Path:
    assert stack.options.models_path is not None
    return stack.options.models_path

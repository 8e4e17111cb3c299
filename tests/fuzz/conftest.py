"""The whole stack for fuzzing: embedded Postgres, SeaweedFS and gunicorn, and no worker.

With no worker every job a fuzz case submits stays queued, so thousands of them cost a row each and
no inference. The stack's output goes to ``stack.log`` in its folder, where a 5xx's traceback is
found by the request id the fuzzer sent.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.local import running_stack
from service.stack import LocalStack

ADMIN_TOKEN_VARIABLE = "ONNX_WEB_ADMIN_TOKEN"


@pytest.fixture(scope="session")
def admin_token() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def stack(admin_token: str) -> Iterator[LocalStack]:
    # Not under pytest's basetemp: another pytest run on the machine removes all but the newest
    # three of those, and with them the database of a fuzz run that takes minutes.
    with (
        tempfile.TemporaryDirectory(prefix="onnx-web-fuzz-") as data,
        running_stack(Path(data), workers=0, environ={ADMIN_TOKEN_VARIABLE: admin_token}) as local,
    ):
        yield local

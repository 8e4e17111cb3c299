"""``onnx-web run`` makes one admin token per data folder, keeps it across restarts, gives it to
every api process and prints it in its banner (never in a log line); ``ONNX_WEB_ADMIN_TOKEN`` wins."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from service.stack import ADMIN_TOKEN_FILE
from tests.integration.stack_process import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Routes behind the admin token (the GUI's Models tab reads the first two).
ADMIN_ROUTES = ("/api/models", "/api/extras", "/api/worker/status")


def run_once(data_dir: Path, models: Path, env: dict[str, str] | None = None) -> tuple[str, list[int], str]:
    """Start a stack, try its admin routes, stop it: (its banner's admin line, the status codes
    without a token, then with the data folder's token or ``env``'s, every JSON log line)."""
    stack = RunningStack(data_dir, models=models, workers=0, env=env)
    try:
        stack.wait_ready()
        tokens = list((env or {}).values()) or [(data_dir / ADMIN_TOKEN_FILE).read_text().strip()]
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            codes = [client.get(route).status_code for route in ADMIN_ROUTES]
            for token in tokens:
                codes += [client.get(route, params={"token": token}).status_code for route in ADMIN_ROUTES]
        banner = next(line for line in stack.tail(400).splitlines() if line.startswith("admin: "))
        logs = "\n".join(json.dumps(entry) for entry in stack.logs())
        stack.signal_group(signal.SIGTERM)
        assert stack.wait_exit(60) == 0
        return banner, codes, logs
    finally:
        stack.close()


def test_the_banner_admin_token_opens_the_admin_routes_and_outlives_a_restart(
    data_dir: Path, models: Path
) -> None:
    banner, codes, logs = run_once(data_dir, models)
    token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    assert codes == [401] * 3 + [200] * 3
    assert banner.startswith("admin: http://127.0.0.1:") and banner.endswith(f"/?token={token}")
    assert token not in logs
    assert (data_dir / ADMIN_TOKEN_FILE).stat().st_mode & 0o777 == 0o600

    again, codes, _ = run_once(data_dir, models)
    assert codes == [401] * 3 + [200] * 3
    assert again.endswith(f"/?token={token}")


def test_the_environments_admin_token_wins_and_is_not_printed(data_dir: Path, models: Path) -> None:
    banner, codes, logs = run_once(data_dir, models, env={"ONNX_WEB_ADMIN_TOKEN": "token-from-the-env"})

    assert codes == [401] * 3 + [200] * 3
    assert "token-from-the-env" not in banner and "token-from-the-env" not in logs
    assert not (data_dir / ADMIN_TOKEN_FILE).exists()

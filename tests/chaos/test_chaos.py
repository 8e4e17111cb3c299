"""``scripts/chaos.py`` in small: 40 jobs through ``onnx-web run`` under every kind of fault.

Four workers on the tiny demo models; random workers SIGKILLed or SIGSTOPped every few seconds,
plus one Postgres restart, one S3 server SIGKILL and one api SIGKILL. About two minutes on two
cores. ``make test-chaos`` runs the full size (1,000 jobs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_no_job_is_lost_and_no_output_is_seen_twice_under_chaos(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "chaos.json"
    command = [sys.executable, "scripts/chaos.py", "--jobs", "40", "--rate", "1", "--baseline", "5"]
    ran = subprocess.run(
        [*command, "--every", "4", "--seed", "7", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert (report["submitted"], report["completed"], report["lost"]) == (40, 40, 0)
    assert report["duplicate_visible_outputs"] == 0
    assert report["sigkills"] >= 1
    assert {event["event"] for event in report["one_offs"]} == {"postgres_restart", "api_kill", "s3_kill"}
    assert {"api", "s3"} <= set(report["supervisor_restarts"])
    assert report["left_running_after_stop"] == 0
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(ran.stdout)
        return
    with capture.global_and_fixture_disabled():  # the figures are the report, also on success
        print(ran.stdout)

"""``bench.queue`` (the zero-length claim + complete benchmark) runs end to end on an embedded server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import queue

pytestmark = [pytest.mark.integration]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores")
def test_the_claimers_drain_exactly_the_jobs_asked_with_postgres_on_cores_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "queue.json"
    argv = ["--jobs", "120", "--pending", "30", "--workers", "2", "--processes", "2"]
    assert queue.main([*argv, "--postgres-cores", "1", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["jobs"] == 120 and figures["workers"] == 4 and figures["pending"] == 30
    assert figures["postgres_cores"] == 1
    assert figures["jobs_per_s"] > 0 and figures["claim_p99_ms"] >= figures["claim_p50_ms"] > 0


def test_pinning_is_refused_without_a_core_left_for_the_claimers(capsys: pytest.CaptureFixture[str]) -> None:
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(SystemExit):
        queue.main(["--postgres-cores", str(cores)])
    assert "--postgres-cores" in capsys.readouterr().err

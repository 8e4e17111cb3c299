"""``bench.scale`` end to end at a tiny size, against the session's Postgres and S3 servers.

Only the shape of its figures and the fate of its jobs are checked: speed depends on the machine.
"""

from __future__ import annotations

import pytest

from bench import scale
from service.stack import S3Credentials

pytestmark = pytest.mark.integration

PHASE_KEYS = {
    "workers",
    "jobs_per_s",
    "ideal_jobs_per_s",
    "efficiency",
    "finished_in_window",
    "claims",
    "claim_p50_ms",
    "claim_p99_ms",
    "cpu_cores",
}


def test_a_tiny_scale_run_completes_every_job_it_claims(
    postgres_admin_url: str, s3_credentials: S3Credentials
) -> None:
    settings = scale.Settings(
        job_s=0.05,
        worker_counts=(1, 2),
        backlogs=(20,),
        warmup_s=0.2,
        window_s=1.0,
        zero_jobs=20,
        zero_workers=2,
    )

    result = scale.run(postgres_admin_url, s3_credentials, settings)

    assert set(result) == {"benchmark", "machine", "settings", "backlogs", "zero_length", "goals"}
    [backlog] = result["backlogs"]
    assert backlog["pending"] == 20
    assert [row["workers"] for row in backlog["phases"]] == [1, 2]
    for row in backlog["phases"]:
        assert set(row) == PHASE_KEYS
        assert row["finished_in_window"] > 0 and row["claims"] > 0
        assert set(row["cpu_cores"]) == {"postgres", "s3", "workers"}
    # Every claimed job succeeded on its first attempt; the rest of the backlog is still waiting.
    assert set(backlog["states"]) <= {"pending", "success"}, backlog["states"]
    assert backlog["states"]["pending"] >= 20 and backlog["retried"] == 0
    assert set(backlog["explain_claim"]) == {"execution_ms", "indexes", "node_types", "rows_sorted"}
    [zero] = result["zero_length"]
    assert (zero["pending"], zero["jobs"], zero["workers"]) == (20, 20, 2)
    assert set(result["goals"]) == {
        "efficiency_all_worker_counts",
        "zero_length_jobs_per_s",
        "claim_p99_large_over_small_backlog",
    }
    assert "| 20 | 2 |" in scale.table(result)


def test_the_queue_benchmark_reports_what_its_backends_waited_on(postgres_admin_url: str) -> None:
    from bench import queue

    result = queue.run(postgres_admin_url, jobs=40, workers=2, pending=10, waits=True)

    assert result["jobs"] == 40 and result["jobs_per_s"] > 0
    waits = result["waits"]
    assert waits and all(share >= 0 for share in waits.values())
    # Two claimers, sampled often enough to see them in some state; each share is rounded to three
    # decimals, so their sum may pass 2 by that rounding.
    assert 0 < sum(waits.values()) <= 2 + 0.0005 * len(waits)

"""The queue under contention: claims are exclusive, submissions idempotent, the claim uses its index."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy

from service.db import make_engine
from service.errors import IdempotencyConflict
from service.jobs.queries import QUERIES
from service.jobs.store import ClaimedJob, JobStore, JobView
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, new_job, seed_jobs

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run_together(count: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(i)`` in ``count`` threads released at the same instant; re-raise any error."""
    barrier = threading.Barrier(count)

    def gathered(index: int) -> T:
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(gathered, range(count)))


@pytest.fixture
def wide_store(database_url: str) -> Any:
    """A store whose pool gives each of 20 threads its own connection."""
    engine = make_engine(database_url, pool_size=20, max_overflow=0)
    yield JobStore(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
    engine.dispose()


def test_sixteen_claimers_take_each_of_5000_jobs_exactly_once(
    wide_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    seed_jobs(engine, 5000)

    def drain(index: int) -> list[ClaimedJob]:
        claimed = []
        while (job := wide_store.claim(f"w{index}", platform="cpu", held_models=[])) is not None:
            claimed.append(job)
        return claimed

    claims = [job for batch in run_together(16, drain) for job in batch]

    counts = Counter(job.id for job in claims)
    assert len(claims) == 5000
    assert len(counts) == 5000, f"claimed twice: {[i for i, n in counts.items() if n > 1][:5]}"
    assert {job.attempt for job in claims} == {1}
    with engine.connect() as conn:
        states = dict(conn.execute(sqlalchemy.text("SELECT state, count(*) FROM jobs GROUP BY state")).all())
    assert states == {"running": 5000}
    assert wide_store.queue_depth() == 0


def test_two_claimers_racing_for_one_job_one_wins(wide_store: JobStore) -> None:
    for _ in range(20):
        wide_store.enqueue(new_job())
        results = run_together(2, lambda i: wide_store.claim(f"w{i}", platform="cpu", held_models=[]))
        assert sum(result is not None for result in results) == 1


def test_claim_plan_uses_the_partial_index(engine: sqlalchemy.Engine) -> None:
    # A realistic table: mostly history, a queue at the front.
    seed_jobs(engine, 2500, state="success")
    seed_jobs(engine, 500)
    explain = sqlalchemy.text("EXPLAIN (FORMAT JSON) " + QUERIES["claim_batch"].text)
    params = {
        "worker_id": "w",
        "platform": "cpu",
        "held_models": ["m"],
        "lease_s": 30.0,
        "affinity_window_s": 30.0,
        "batch_max": 1,
        "memory_kind": "cpu",
        "memory_bytes": 8 * 1024**3,
    }
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("ANALYZE jobs"))
        plan = conn.execute(explain, params).scalar_one()
    nodes = list(_plan_nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]))
    summary = [(node["Node Type"], node.get("Relation Name"), node.get("Index Name")) for node in nodes]
    assert not any(kind == "Seq Scan" for kind, _, _ in summary), summary
    assert any(index == "jobs_claim_idx" for _, _, index in summary), summary


def _plan_nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_twenty_concurrent_submissions_with_one_key_make_one_job(
    wide_store: JobStore, engine: sqlalchemy.Engine
) -> None:
    def submit(index: int) -> JobView:
        # Each retry of a request gets a fresh name (new timestamp); the key ties them together.
        return wide_store.enqueue(new_job(idempotency_key="k-1", request_hash="h-1"))

    views = run_together(20, submit)

    assert len({view.id for view in views}) == 1
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM jobs")).scalar_one() == 1
    with pytest.raises(IdempotencyConflict):
        wide_store.enqueue(new_job(idempotency_key="k-1", request_hash="h-2"))

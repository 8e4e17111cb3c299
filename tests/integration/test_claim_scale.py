"""The claim over a deep queue: the documented order still holds, and it reads indexes, not the queue.

``claim_batch`` walks two indexes (migration 0008) instead of sorting every pending row; these tests
hold it to the order its comment documents (priority, then jobs past the affinity window, then held
models, then age, then id) against a reference computed here, over thousands of mixed jobs.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy

from service.jobs.queries import QUERIES
from service.jobs.store import JobStore
from tests.fixtures.postgres import TEST_LEASE_S, seed_jobs

pytestmark = pytest.mark.integration

GIB = 1024**3
#: Long, so that jobs kept far from its edge never cross it while the test runs.
WINDOW_S = 3600.0
MODELS = ("a", "b", "c", None)
INSERT = sqlalchemy.text(
    """
    INSERT INTO jobs (id, name, kind, priority, model, platform, chain, max_attempts, memory, created_at)
    VALUES (:id, :name, 'txt2img', :priority, :model, :platform, '{"stages": []}', 3,
            CAST(:memory AS jsonb), :created_at)
    """
)


@dataclass(frozen=True)
class Row:
    """What the claim order depends on, for one pending job."""

    id: uuid.UUID
    name: str
    priority: int
    model: str | None
    platform: str | None
    memory_cpu: int | None
    created_at: datetime


def mixed_backlog(engine: sqlalchemy.Engine, count: int, seed: int) -> list[Row]:
    """``count`` pending jobs of mixed priority, model, platform, memory and age, inserted at once.

    Ages keep minutes away from the edge of ``WINDOW_S``, so the test's own run time never moves a
    job across it.
    """
    rng = random.Random(seed)
    with engine.connect() as conn:
        now: datetime = conn.execute(sqlalchemy.text("SELECT now()")).scalar_one()
    rows = []
    for index in range(count):
        age = (
            rng.uniform(0, WINDOW_S / 6) if rng.random() < 0.7 else rng.uniform(WINDOW_S * 1.2, WINDOW_S * 3)
        )
        memory = rng.choice([None, 2 * GIB, 12 * GIB])
        rows.append(
            Row(
                id=uuid.uuid4(),
                name=f"mixed_{seed}_{index}",
                priority=rng.choice([0, 0, 0, 1, 2]),
                model=rng.choice(MODELS),
                platform=rng.choice([None, None, "cpu", "cuda"]),
                memory_cpu=memory,
                # Timestamps repeat now and then, so the id breaks ties as it does in production.
                created_at=now - timedelta(seconds=round(age, -1)),
            )
        )
    params: list[dict[str, Any]] = [
        {
            "id": row.id,
            "name": row.name,
            "priority": row.priority,
            "model": row.model,
            "platform": row.platform,
            "memory": None if row.memory_cpu is None else json.dumps({"cpu": row.memory_cpu, "gpu": GIB}),
            "created_at": row.created_at,
        }
        for row in rows
    ]
    with engine.begin() as conn:
        conn.execute(INSERT, params)
        conn.execute(sqlalchemy.text("ANALYZE jobs"))
    return rows


def expected_next(
    pending: dict[uuid.UUID, Row], now: datetime, held: tuple[str, ...], memory_bytes: int | None
) -> Row | None:
    """The job the documented order gives a CPU worker, computed from first principles."""
    cutoff = now - timedelta(seconds=WINDOW_S)

    def fits(row: Row) -> bool:
        return row.platform in (None, "cpu") and (
            memory_bytes is None or row.memory_cpu is None or row.memory_cpu <= memory_bytes
        )

    def rank(row: Row) -> tuple[int, int, datetime, uuid.UUID]:
        window = 0 if row.created_at < cutoff else 1 if row.model in held else 2
        return (-row.priority, window, row.created_at, row.id)

    return min(filter(fits, pending.values()), key=rank, default=None)


def test_the_claim_follows_the_documented_order_through_a_deep_mixed_queue(engine: sqlalchemy.Engine) -> None:
    job_store = JobStore(engine, lease_s=TEST_LEASE_S, affinity_window_s=WINDOW_S)
    rows = mixed_backlog(engine, 5000, seed=15)
    pending = {row.id: row for row in rows}
    workers = [(("a",), None), (("b", "c"), 4 * GIB), ((), None), (("c",), 16 * GIB), (("a", "b", "c"), GIB)]
    rng = random.Random(7)

    for turn in range(300):
        held, memory_bytes = rng.choice(workers)
        with engine.connect() as conn:
            now = conn.execute(sqlalchemy.text("SELECT now()")).scalar_one()
        expected = expected_next(pending, now, held, memory_bytes)

        claimed = job_store.claim(
            f"w{turn}", platform="cpu", held_models=held, memory_kind="cpu", memory_bytes=memory_bytes
        )

        assert (claimed and claimed.name) == (expected and expected.name), (turn, held, memory_bytes)
        if claimed is not None:
            del pending[claimed.id]


@pytest.mark.parametrize("held", ["b", "absent"])
def test_the_claim_reads_a_few_index_entries_however_deep_the_queue(
    engine: sqlalchemy.Engine, held: str
) -> None:
    # A deep queue inside the affinity window (the costlier claim: the held-model walk runs too),
    # behind a history of finished jobs; a held model with no job must not walk the whole queue.
    seed_jobs(engine, 2000, state="success")
    seed_jobs(engine, 20_000, model="a")
    seed_jobs(engine, 20_000, model="b")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("ANALYZE jobs"))
    explain = sqlalchemy.text("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["claim_batch"].text)
    params = {
        "worker_id": "w",
        "platform": "cpu",
        "held_models": [held],
        "lease_s": 30.0,
        # The seeded jobs are up to 40,000 s old: a window that long keeps them all inside it.
        "affinity_window_s": 100_000.0,
        "batch_max": 1,
        "memory_kind": "cpu",
        "memory_bytes": 8 * GIB,
    }
    with engine.connect() as conn:
        plan = conn.execute(explain, params).scalar_one()[0]["Plan"]
        conn.rollback()

    nodes = list(_plan_nodes(plan))
    scans = [node for node in nodes if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]]
    assert {node["Node Type"] for node in scans} <= {"Index Scan", "Index Only Scan"}, scans
    assert {node.get("Index Name") for node in scans} >= {"jobs_claim_idx", "jobs_model_claim_idx"}
    # Rows read from jobs, every loop counted: the head, one held-model job and the update's lookup,
    # not the 40,000 pending.
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in scans) <= 5
    assert all(node["Actual Rows"] <= 2 for node in nodes if node["Node Type"] == "Sort")


def test_status_of_jobs_none_of_them_pending_does_not_rank_the_queue(engine: sqlalchemy.Engine) -> None:
    # What a GUI polls most: its running and finished jobs, while a deep queue waits.
    seed_jobs(engine, 10, state="success")
    seed_jobs(engine, 20_000)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("ANALYZE jobs"))
        names = list(conn.execute(sqlalchemy.text("SELECT name FROM jobs WHERE state = 'success'")).scalars())
    explain = sqlalchemy.text("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["select_jobs"].text)
    with engine.connect() as conn:
        plan = conn.execute(explain, {"names": names, "owner": None}).scalar_one()[0]["Plan"]
        conn.rollback()

    nodes = list(_plan_nodes(plan))
    scans = [node for node in nodes if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]]
    # The pending jobs' scan is planned but never runs: the asked-for rows (twice) are all it reads.
    assert any(node["Actual Loops"] == 0 for node in scans), scans
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in scans) <= 2 * len(names)


def _plan_nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)

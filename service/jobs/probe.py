"""``QueueProbe``: the statements benchmarks run on the jobs table and its server, never the service.

``bench.queue`` and ``bench.scale`` fill deep backlogs, read how jobs ended and how the claim is
planned, and read the server's limits; the SQL for that lives here, beside the table's other
statements, so that ``service/jobs`` stays the one place that speaks SQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text

from service.jobs.queries import QUERIES

#: ``count`` pending jobs one microsecond apart (oldest first), naming ``models`` round robin.
FILL_BACKLOG = text(
    """
    INSERT INTO jobs (id, name, kind, model, chain, max_attempts, created_at)
    SELECT gen_random_uuid(), :prefix || n, 'txt2img', (CAST(:models AS text[]))[1 + n % :model_count],
           CAST(:chain AS jsonb), 3, now() - make_interval(secs => (:count - n) / 1e6)
    FROM generate_series(1, :count) AS n
    """
)
#: Jobs by state.
COUNT_STATES = text("SELECT state::text, count(*) FROM jobs GROUP BY state")
#: Jobs that needed another attempt: a lost lease, a failure or a hand-back.
COUNT_RETRIED = text("SELECT count(*) FROM jobs WHERE attempt > 1 OR errors <> '[]'")
#: The server's clock now (not the transaction's start), to bound a measured window.
CLOCK = text("SELECT clock_timestamp()")
#: Per worker: the jobs it finished in [start, end) and the seconds between its first and last.
WINDOW_RATES = text(
    """
    SELECT worker_id, count(*) AS jobs, EXTRACT(EPOCH FROM max(finished_at) - min(finished_at)) AS span_s
    FROM jobs
    WHERE state = 'success' AND finished_at >= :start AND finished_at < :end
    GROUP BY worker_id
    """
)
#: The claim's plan, run for real (the caller rolls back).
EXPLAIN_CLAIM = text("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["claim_batch"].text)
ANALYZE = text("ANALYZE jobs")
SHOW_MAX_CONNECTIONS = text("SHOW max_connections")
BACKEND_PID = text("SELECT pg_backend_pid()")
#: What this database's other client backends wait on now: ``type:event``, ``CPU`` (waiting on
#: nothing) or ``idle`` (waiting for their client), with how many of them do.
BACKEND_WAITS = text(
    """
    SELECT CASE WHEN state = 'idle' THEN 'idle'
        ELSE coalesce(wait_event_type || ':' || wait_event, 'CPU') END AS wait,
        count(*) AS backends
    FROM pg_stat_activity
    WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
    GROUP BY 1
    """
)


class QueueProbe:
    """Benchmark access to the jobs table of ``engine``'s database and to its server."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def fill_backlog(self, count: int, *, models: Sequence[str], chain: Mapping[str, Any]) -> None:
        """Insert ``count`` pending jobs in one statement (100,000 take seconds), then ANALYZE."""
        if count <= 0:
            return
        params = {
            "prefix": f"backlog_{uuid.uuid4().hex[:8]}_",
            "models": list(models),
            "model_count": len(models),
            "chain": json.dumps(chain),
            "count": count,
        }
        with self._engine.begin() as conn:
            conn.execute(FILL_BACKLOG, params)
        # Autovacuum would get there later; the claim's plan must see the table as it is now.
        with self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(ANALYZE)

    def pending(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(QUERIES["count_pending"]).scalar_one())

    def states(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            return {state: count for state, count in conn.execute(COUNT_STATES)}

    def retried(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(COUNT_RETRIED).scalar_one())

    def clock(self) -> datetime:
        with self._engine.connect() as conn:
            now: datetime = conn.execute(CLOCK).scalar_one()
        return now

    def window_rates(self, start: datetime, end: datetime) -> list[tuple[str, int, float]]:
        """``(worker, jobs finished, seconds from its first to its last)`` within ``[start, end)``."""
        with self._engine.connect() as conn:
            rows = conn.execute(WINDOW_RATES, {"start": start, "end": end}).all()
        return [(row.worker_id, int(row.jobs), float(row.span_s or 0.0)) for row in rows]

    def explain_claim(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``EXPLAIN ANALYZE`` of one ``claim_batch`` with ``params``, rolled back: the JSON plan."""
        with self._engine.connect() as conn:
            plan: dict[str, Any] = conn.execute(EXPLAIN_CLAIM, dict(params)).scalar_one()[0]
            conn.rollback()
        return plan

    def max_connections(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(SHOW_MAX_CONNECTIONS).scalar_one())

    def set_max_connections(self, connections: int) -> None:
        """Raise the server's connection limit; it applies from the server's next start."""
        # ALTER SYSTEM takes no bind parameters: the number is quoted as a literal by psycopg.
        statement = sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(connections))
        with self._engine.connect() as conn:
            driver = conn.execution_options(isolation_level="AUTOCOMMIT").connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            driver.execute(statement)

    def backend_pid(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(BACKEND_PID).scalar_one())

    def backend_waits(self, conn: Any) -> list[tuple[str, int]]:
        """``(wait, backends)`` of the other client backends of this database right now, read on
        ``conn`` (an autocommit connection a sampler keeps open)."""
        return [(str(wait), int(backends)) for wait, backends in conn.execute(BACKEND_WAITS)]

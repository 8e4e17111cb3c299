"""A Postgres that takes reads but refuses writes (a primary demoted in a failover, a standby
reached by an old address, a maintenance window's ``default_transaction_read_only``) is an outage
like any other: the api answers 503, background loops wait it out, and the pool, whose connections
stay read-only for their whole session, lets them go so that the next ones reach a writable server.

The database is made read-only for new sessions (``ALTER DATABASE``), and the pool emptied, as
connections reopened after a failover would find it; the setting is reset to end the outage.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from psycopg import sql
from sqlalchemy.engine import make_url

from service.db import libpq_url
from service.jobs.store import JobStore
from service.rescue import LeaseRescuer
from service.storage import ObjectStore
from tests.integration.api import api_client, make_models

pytestmark = pytest.mark.integration


def set_read_only(postgres_admin_url: str, database_url: str, read_only: bool) -> None:
    """Make the test's database refuse writes in every session started from now on (or not)."""
    name = make_url(database_url).database
    setting = sql.SQL(
        "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
    )
    with psycopg.connect(libpq_url(postgres_admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ").format(sql.Identifier(name)) + setting)


def test_a_read_only_database_is_a_503_and_the_pool_heals_once_it_takes_writes(
    postgres_admin_url: str,
    database_url: str,
    engine: sqlalchemy.Engine,
    job_store: JobStore,
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)
    set_read_only(postgres_admin_url, database_url, True)
    engine.dispose()

    status = client.simulate_get("/api/job/status", params={"jobs": "txt2img_1_aa_1"})
    refused = client.simulate_post("/api/txt2img", params={"prompt": "a cat", "steps": 2})
    set_read_only(postgres_admin_url, database_url, False)
    accepted = client.simulate_post("/api/txt2img", params={"prompt": "a cat", "steps": 2})

    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/json") and "Retry-After" in refused.headers
    assert status.status_code == 200, "reads still work"
    assert accepted.status_code == 200, f"the pool kept a read-only connection: {accepted.text}"


def test_the_apis_lease_rescuer_waits_out_a_read_only_database(
    postgres_admin_url: str, database_url: str, engine: sqlalchemy.Engine, job_store: JobStore
) -> None:
    rescuer = LeaseRescuer(job_store, interval_s=1.0)
    set_read_only(postgres_admin_url, database_url, True)
    engine.dispose()
    try:
        rescuer.round()  # raising here ends the rescuer's thread for the life of the process
    finally:
        set_read_only(postgres_admin_url, database_url, False)
    rescuer.round()

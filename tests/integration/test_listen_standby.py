"""A worker's LISTEN connection meeting a standby (a failover's demoted primary, an old address):
Postgres takes the connection and refuses ``LISTEN`` during recovery, as it refuses writes, which
``service.db`` counts as an outage. The listener must too: fail as an outage, leave no connection
open, and keep polling, where the refusal ended the worker at its start or in its wait.

The server is one of this test's own, stopped and started again in recovery (``standby.signal``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.db import libpq_url
from service.jobs.notify import Notifier
from service.stack import temporary_postgres
from tests.integration.stack_process import pg_start, pg_stop

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A Postgres of this test alone: its data folder and its admin URL."""
    with temporary_postgres("onnx-web-test-standby-pg-") as (server, admin_url):
        yield server.datadir, admin_url


def become_standby(datadir: Path) -> None:
    pg_stop(datadir)
    (datadir / "standby.signal").touch()
    pg_start(datadir)


def backends(admin_url: str) -> int:
    """Client connections to the server other than the one asking."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_listener_that_meets_a_standby_polls_on_and_keeps_no_connection(
    own_postgres: tuple[Path, str],
) -> None:
    datadir, admin_url = own_postgres
    notifier = Notifier(admin_url)
    try:
        become_standby(datadir)
        with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert in_recovery == (True,), "the server did not start as a standby"

        assert notifier.wait(0.1) is False  # meets the ended connection
        assert notifier.wait(0.1) is False  # connects again and is refused LISTEN: an outage
        with pytest.raises(psycopg.OperationalError):
            Notifier(admin_url)  # a worker starting now waits it out (service.retries.DB_OUTAGE)
        assert backends(admin_url) == 0, "a refused listener kept its connection"
    finally:
        notifier.close()

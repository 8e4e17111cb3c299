"""A Postgres that stops answering costs an api thread a bounded wait, then 503s at once.

Before the watchdog, a frozen server (or a network black hole) held every api thread that touched
the database, the pool's pre-ping included, until the server came back: requests hung for minutes,
event streams fell silent and the liveness probe queued behind them. The server here is frozen by
a proxy that holds every byte (``tests.fixtures.proxy``), as SIGSTOP or a dropped route would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from pipelines.models.registry import ModelRegistry
from service.db import CONNECT_TIMEOUT_S, OUTAGE_COOLDOWN_S, make_engine
from service.jobs.models import ModelRecords
from service.jobs.store import JobStore
from service.modelstore import PublishedModels
from service.storage import ObjectStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S
from tests.fixtures.proxy import FreezingProxy
from tests.integration.api import api_client, error_of, make_models
from tests.integration.workers import wait_until

pytestmark = pytest.mark.integration

DEADLINE_S = 1.0
#: Room for a loaded CI machine: the bound is what matters, not its exact value.
SLACK_S = 3.0


@pytest.fixture
def proxy(database_url: str) -> Iterator[FreezingProxy]:
    built = FreezingProxy(database_url)
    yield built
    built.close()


@pytest.fixture
def guarded(proxy: FreezingProxy) -> Iterator[sqlalchemy.Engine]:
    """An engine as the api builds it, with a short deadline, through the proxy."""
    engine = make_engine(proxy.url, deadline_s=DEADLINE_S, statement_timeout_s=None)
    yield engine
    engine.dispose()


def select_one(engine: sqlalchemy.Engine) -> float:
    """Seconds one ``SELECT 1`` took; raises what the engine raises."""
    started = time.monotonic()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1")).scalar_one()
    return time.monotonic() - started


def failure_after(engine: sqlalchemy.Engine) -> float:
    """Seconds until ``SELECT 1`` failed as an outage does."""
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        select_one(engine)
    return time.monotonic() - started


def test_a_frozen_server_costs_one_deadline_then_fails_at_once_until_it_answers_again(
    proxy: FreezingProxy, guarded: sqlalchemy.Engine
) -> None:
    select_one(guarded)  # a pooled connection, checked on its next checkout

    proxy.freeze()
    first = failure_after(guarded)  # the check of the pooled connection waits out the deadline
    assert DEADLINE_S <= first < DEADLINE_S + SLACK_S
    assert failure_after(guarded) < DEADLINE_S  # no second wait while the outage is known

    proxy.thaw()
    time.sleep(OUTAGE_COOLDOWN_S)
    select_one(guarded)  # one probe finds the server back, and the pool reconnects
    assert select_one(guarded) < DEADLINE_S


def test_a_statement_in_flight_when_the_server_freezes_ends_at_the_deadline(
    proxy: FreezingProxy, guarded: sqlalchemy.Engine
) -> None:
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError), guarded.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1")).scalar_one()
        proxy.freeze()
        conn.execute(sqlalchemy.text("SELECT 2")).scalar_one()
    assert time.monotonic() - started < DEADLINE_S + SLACK_S


def test_work_inside_the_deadline_is_never_cut(guarded: sqlalchemy.Engine) -> None:
    for _ in range(3):
        with guarded.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_sleep(:s)"), {"s": DEADLINE_S / 2})
    # Connections returned in time are not shut later either: the pool's next checkouts work.
    time.sleep(DEADLINE_S * 1.5)
    select_one(guarded)


def test_the_api_answers_503_while_the_database_is_frozen(
    proxy: FreezingProxy, guarded: sqlalchemy.Engine, object_store: ObjectStore, tmp_path: Path
) -> None:
    jobs = JobStore(guarded, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
    client = api_client(jobs, object_store, make_models(tmp_path / "models"), tmp_path)
    submitted = client.simulate_post("/api/txt2img", params={"prompt": "cat", "steps": "3"})
    assert submitted.status_code == 200, submitted.text

    proxy.freeze()
    for _ in range(2):
        status = client.simulate_get("/api/job/status", params={"jobs": submitted.json["name"]})
        assert status.status_code == 503, status.text
        assert "database" in error_of(status)
        assert int(status.headers["retry-after"]) > 0
    assert client.simulate_get("/healthz").status_code == 200


def test_a_probe_whose_connect_times_out_starts_a_cooldown_and_frees_the_probe(
    proxy: FreezingProxy, guarded: sqlalchemy.Engine
) -> None:
    """A probe that failed on its connect timeout used to keep the probe for itself until its whole
    allowance ran out, so requests kept failing at once for seconds after the server was back."""
    select_one(guarded)
    proxy.freeze()
    failure_after(guarded)  # the pooled connection's deadline: the outage is known
    time.sleep(OUTAGE_COOLDOWN_S)

    probe = failure_after(guarded)  # a new connection, which the frozen server never answers
    assert CONNECT_TIMEOUT_S - 1 <= probe < CONNECT_TIMEOUT_S + SLACK_S
    proxy.thaw()
    assert failure_after(guarded) < DEADLINE_S  # a fresh cooldown, not a held probe

    time.sleep(OUTAGE_COOLDOWN_S)
    select_one(guarded)  # the next probe finds the server back


def test_the_model_listing_is_refreshed_in_the_background_once_it_was_read(
    proxy: FreezingProxy, guarded: sqlalchemy.Engine, tmp_path: Path
) -> None:
    """Every ``/api`` request passes the published-models refresh: on a frozen database it held the
    settings and the docs, which need no database, for a connect timeout or a deadline."""
    published = PublishedModels(
        ModelRecords(guarded), ModelRegistry(make_models(tmp_path / "models"), ()), interval_s=0.0
    )
    published.refresh()  # the first read is made in the request: nothing is listed before it

    proxy.freeze()
    started = time.monotonic()
    for _ in range(3):
        published.refresh()
    assert time.monotonic() - started < DEADLINE_S  # the read waits in its own thread
    proxy.thaw()
    # Its connection goes back to the pool before the engine is disposed, not to a disposed pool.
    wait_until(lambda: not published._reading, timeout_s=DEADLINE_S + SLACK_S, what="the background read")

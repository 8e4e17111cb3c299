"""The LISTEN connections (a worker's ``Notifier``, the api's ``EventHub``) fail within the connect
timeout on a Postgres that takes connections and never answers, and hear again once it answers.

Without a connect timeout libpq waits for the server's first answer forever: a frozen Postgres
(SIGSTOP, a stopped VM, a black-holed route) held a listener until it came back, so a worker
starting then never started, and the api's hub never logged the outage. The servers here are
real sockets: one that accepts and never answers, and ``FreezingProxy`` in front of the test's
Postgres, frozen and thawed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from service.db import CONNECT_TIMEOUT_S, create_database, upgrade_head
from service.events import EventHub
from service.jobs.notify import CHANNEL, EVENTS_CHANNEL, Notifier
from tests.fixtures.proxy import FreezingProxy
from tests.integration.workers import wait_until

pytestmark = pytest.mark.integration

#: Room for a loaded machine past the connect timeout; a hang runs far past it.
SLACK_S = 10.0


class SilentServer:
    """A loopback port that accepts every connection, reads nothing and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, name="silent-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.append(client)

    def close(self) -> None:
        self._listener.close()
        for client in self.accepted:
            with contextlib.suppress(OSError):
                client.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def proxy(database_url: str) -> Iterator[FreezingProxy]:
    built = FreezingProxy(database_url)
    yield built
    built.close()


def bounded(call: Callable[[], Any], limit_s: float) -> tuple[float, Any]:
    """Run ``call`` in a thread; its seconds and its result or exception, failing the test if it
    is still running after ``limit_s`` (the thread is left to the fixture's cleanup)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as err:
            outcome.append(err)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still waiting after {limit_s:g}s: the connect has no timeout"
    return time.monotonic() - started, outcome[0]


def notify(engine: sqlalchemy.Engine, channel: str, payload: str) -> None:
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


#: Every direct connection the service opens: the LISTEN connection, and those of ``onnx-web
#: migrate`` and of ``onnx-web run``'s start (the pools' are ``test_database_deadline.py``'s).
OPENERS: dict[str, Callable[[str], object]] = {
    "listen": Notifier,
    "migrate": upgrade_head,
    "create database": lambda url: create_database(url, "onnx_web"),
}


@pytest.mark.parametrize("opener", OPENERS.values(), ids=OPENERS.keys())
def test_a_connection_to_a_server_that_never_answers_fails_within_the_connect_timeout(
    database_url: str, silent: SilentServer, opener: Callable[[str], object]
) -> None:
    url = make_url(database_url).set(host="127.0.0.1", port=silent.port, query={})

    took, raised = bounded(
        lambda: opener(url.render_as_string(hide_password=False)), CONNECT_TIMEOUT_S + SLACK_S
    )

    assert isinstance(raised, psycopg.OperationalError | sqlalchemy.exc.OperationalError), raised
    assert silent.accepted, "the server never got the connection: this tested a refusal, not silence"
    assert took >= CONNECT_TIMEOUT_S - 0.5, f"failed after {took:.1f}s: not the timeout"


def test_a_worker_listener_waits_out_a_frozen_server_then_hears_again(
    proxy: FreezingProxy, engine: sqlalchemy.Engine
) -> None:
    notifier = Notifier(proxy.url)
    try:
        with engine.begin() as conn:  # the server drops the connection (a restart, say)...
            conn.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            )
        assert notifier.wait(2.0) is False  # ... which this wait meets, and closes
        proxy.freeze()  # and comes back frozen

        took, woken = bounded(lambda: notifier.wait(0.5), CONNECT_TIMEOUT_S + SLACK_S)

        assert woken is False, woken
        assert took >= CONNECT_TIMEOUT_S - 0.5, f"returned after {took:.1f}s without trying to connect"
        proxy.thaw()
        assert notifier.wait(0.1) is False  # connects and listens again
        notify(engine, CHANNEL, "")
        assert notifier.wait(10.0) is True
    finally:
        proxy.thaw()
        notifier.close()


def test_the_api_event_hub_logs_a_frozen_server_and_hears_again_once_it_answers(
    proxy: FreezingProxy, engine: sqlalchemy.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.events")
    proxy.freeze()
    hub = EventHub(proxy.url)
    try:
        subscription = hub.subscribe(["job-x"])
        wait_until(
            lambda: any(getattr(r, "action", None) == "listen_lost" for r in caplog.records),
            timeout_s=CONNECT_TIMEOUT_S + SLACK_S,
            what="the hub to give up on the frozen server",
        )
        proxy.thaw()

        def heard() -> bool:
            notify(engine, EVENTS_CHANNEL, "job-x")
            return "job-x" in subscription.wait(0.5)

        wait_until(heard, timeout_s=30.0, what="a notification through the hub after the thaw")
    finally:
        proxy.thaw()
        hub.stop()

"""LISTEN/NOTIFY hints, with polling as the fallback: idle workers woken, job events pushed.

``JobStore`` sends ``pg_notify('onnx_web_jobs', <model or ''>)`` after a row becomes ``pending``
and ``pg_notify('onnx_web_job_events', <name>)`` after a job's state, progress counters or cancel
request change, each once the change has committed (``notify`` in queries.sql). A notification
is only a hint: connection poolers in transaction mode drop LISTEN, a notification sent while the
listener reconnects is lost, and so is one whose own transaction fails after the change committed.
So a worker claims again after every ``wait``, whether it was woken or timed out, and an event
stream reads the jobs again now and then even when nothing was heard.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg import sql

from service.db import CONNECT_TIMEOUT_S, libpq_url
from service.logs import OutageLog
from service.retries import first_line

log = logging.getLogger(__name__)
#: While the connection stays lost, a worker's polls log it at most this often.
LOST_LOG_EVERY_S = 60.0

CHANNEL = "onnx_web_jobs"
#: Job names whose state or progress changed (``service.events``).
EVENTS_CHANNEL = "onnx_web_job_events"
#: How often a wait looks at ``interrupt()``: the longest a stopping worker sits in a wait.
INTERRUPT_CHECK_S = 0.25


class Notifier:
    """A dedicated autocommit connection listening on one channel (``CHANNEL`` for a worker).

    Create it before the first claim: notifications that arrive while the worker is busy wait
    on the connection, so the next ``wait`` returns at once instead of missing them.
    """

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        self._conninfo = libpq_url(url)
        self._channel = channel
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._interrupted = threading.Event()
        self._lost = OutageLog(
            log, "listen connection lost; polling", "listen connection back", LOST_LOG_EVERY_S
        )
        self._connect()

    def wait(self, timeout_s: float) -> bool:
        """Block until a job becomes pending or ``timeout_s`` passes; True when woken by a notification.

        If the connection is broken, this degrades to sleeping (plain polling) and reconnects on
        the next call, so a database restart never stops a worker.
        """
        deadline = time.monotonic() + timeout_s
        try:
            if self._conn is None:
                self._connect()
                self._lost.recovered(action="listen_back")
            assert self._conn is not None
            while not self._interrupted.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                slice_s = min(remaining, INTERRUPT_CHECK_S)
                if list(self._conn.notifies(timeout=slice_s, stop_after=1)):
                    # A burst of submissions sends one notification per job; one wake-up covers
                    # them all, since the worker claims until the queue is empty.
                    for _ in self._conn.notifies(timeout=0):
                        pass
                    return True
            return False
        except psycopg.OperationalError as err:
            self.close()
            if self._interrupted.is_set():
                return False  # the worker is stopping: its connection ending is no outage
            self._lost.failed(first_line(err), action="listen_lost")
            self._interrupted.wait(max(0.0, deadline - time.monotonic()))
            return False

    def payloads(self, timeout_s: float) -> list[str]:
        """The payloads of the notifications heard within ``timeout_s`` (all that are waiting, once
        one arrives); empty on timeout or on interrupt.

        A broken connection is closed (the next call connects again) and its
        ``psycopg.OperationalError`` raised: the caller (``service.events``) paces its reconnects
        and its log lines over the whole outage.
        """
        try:
            if self._conn is None:
                self._connect()
            assert self._conn is not None
            first = list(self._conn.notifies(timeout=timeout_s, stop_after=1))
            rest = list(self._conn.notifies(timeout=0)) if first else []
            return [notify.payload for notify in first + rest]
        except psycopg.OperationalError:
            self.close()
            raise

    def interrupt(self) -> None:
        """Make the current and every later ``wait`` return at once (the worker is stopping)."""
        self._interrupted.set()

    def close(self) -> None:
        """Close the listening connection; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connect(self) -> None:
        # A frozen Postgres takes the connection and never answers: without the timeout the
        # listener would wait for it forever instead of failing, polling and trying again.
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException as err:
            conn.close()
            if isinstance(err, psycopg.errors.ReadOnlySqlTransaction):
                # A standby (a failover's demoted primary, an old address) refuses LISTEN during
                # recovery as it refuses writes: an outage, as ``service.db`` has it, polled through.
                raise psycopg.OperationalError(first_line(err)) from err
            raise
        self._conn = conn

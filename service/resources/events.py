"""``GET /api/job/events?jobs=a,b``: job records pushed as server-sent events.

The stream opens with each job's current record, then sends a record whenever one changes (each
progress write, each state change), until every job has ended (then an ``end`` event) or the
stream has lived ``MAX_STREAM_S``. A comment line every ``HEARTBEAT_S`` keeps proxies from
closing it. Every event carries the whole record, the same one ``/api/job/status`` answers, so a
client that reconnects, with ``Last-Event-ID`` or without, simply gets the current records first.

A stream holds one of the api process's threads, so streams are bounded: ``max_streams`` per
process (503 beyond it; clients fall back to polling) and ``STREAMS_PER_OWNER`` per owner (429).

The first records are read before the stream starts, so Postgres being away is the usual 503 with
``Retry-After``; if it goes away later, the stream ends with an ``unavailable`` event (and a
``retry`` of ``Retry-After``) rather than a connection cut halfway through a chunk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import Any

import falcon

from service.auth import ANONYMOUS, key_owner, owner_filter
from service.db import DATABASE_OUTAGES
from service.errors import DatabaseUnavailable, TooManyRequests, Unavailable
from service.events import EventHub, Subscription
from service.jobs.store import JobState, JobStore, JobView
from service.resources.jobs import job_names, render_job

HEARTBEAT_S = 15.0
#: How often a stream reads its jobs even when no notification came.
POLL_S = 5.0
#: A stream ends after this long; the client reconnects (EventSource does so by itself).
MAX_STREAM_S = 600.0
STREAMS_PER_OWNER = 4
#: How long a client waits before reconnecting (the ``retry`` field).
RECONNECT_MS = 2000
#: Statuses after which a job's record never changes again (``unknown``: no such job of yours).
ENDED = frozenset({JobState.SUCCESS.value, JobState.FAILED.value, JobState.CANCELLED.value, "unknown"})

log = logging.getLogger(__name__)


class JobEventsResource:
    """Server-sent events of a few jobs' records."""

    def __init__(self, jobs: JobStore, hub: EventHub, max_streams: int) -> None:
        self.jobs = jobs
        self.hub = hub
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = job_names(req)
        owner = owner_filter(req)
        # Streams are counted per key owner (an admin's too); anonymous ones only in the total.
        keyed = key_owner(req)
        holder = keyed or ANONYMOUS
        with self._lock:
            if sum(self._open.values()) >= self.max_streams:
                raise Unavailable("too many event streams are open on this server; poll /api/job/status")
            if keyed is not None and self._open[holder] >= STREAMS_PER_OWNER:
                raise TooManyRequests(
                    f"at most {STREAMS_PER_OWNER} event streams per owner; close one or poll",
                    retry_after_s=int(POLL_S),
                )
            self._open[holder] += 1
        # Subscribed before the first read, so no change between the two is missed.
        subscription = self.hub.subscribe(names)
        try:
            # Read before the headers go: a database outage is the usual 503 JSON answer.
            views = self.jobs.get_many(sorted(set(names)), owner=owner)
        except Exception:
            self._release(holder, subscription)
            raise
        resp.content_type = "text/event-stream"
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = _Stream(
            self._stream(names, owner, subscription, views), lambda: self._release(holder, subscription)
        )

    def _release(self, holder: str, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)
        with self._lock:
            self._open[holder] -= 1

    def _stream(
        self, names: list[str], owner: str | None, subscription: Subscription, first: dict[str, JobView]
    ) -> Generator[bytes, None, None]:
        sent: dict[str, dict[str, Any]] = {}
        counter = 0
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        deadline = time.monotonic() + MAX_STREAM_S
        heartbeat_due = time.monotonic() + HEARTBEAT_S
        changed: set[str] = set(names)
        views = first
        while True:
            for name in names:
                if name not in changed:
                    continue
                record = render_job(name, views.get(name))
                if sent.get(name) != record:
                    counter += 1
                    sent[name] = record
                    yield _event("status", counter, record)
            if all(record["status"] in ENDED for record in sent.values()):
                yield _event("end", counter + 1, {"jobs": names})
                return
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= heartbeat_due:
                heartbeat_due = now + HEARTBEAT_S
                yield b": heartbeat\n\n"
            heard = subscription.wait(min(POLL_S, heartbeat_due - now, deadline - now))
            changed = heard & set(names) if heard else set(names)
            try:
                views = self.jobs.get_many(sorted(changed), owner=owner) if changed else {}
            except DATABASE_OUTAGES as err:
                # The headers went long ago: end the stream cleanly, and say when to come back.
                log.warning("event stream ended: database unavailable", extra={"error": type(err).__name__})
                yield _unavailable(counter + 1)
                return


class _Stream:
    """The response body: the WSGI server calls ``close`` when the client is gone or the stream
    ended, started or not, so the stream's place is always given back."""

    def __init__(self, events: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._events = events
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        release, self._release = self._release, None
        if release is not None:
            release()


def _unavailable(number: int) -> bytes:
    """The last event of a stream whose database went away: reconnect after ``Retry-After``."""
    outage = DatabaseUnavailable("the database is unavailable; try again shortly")
    data = {"error": outage.message, "retryAfter": outage.retry_after_s}
    return f"retry: {outage.retry_after_s * 1000}\n".encode() + _event("unavailable", number, data)


def _event(kind: str, number: int, data: dict[str, Any]) -> bytes:
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

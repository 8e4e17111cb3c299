"""Pushed job progress: one LISTEN connection per api process, fanned out to event streams.

``EventHub`` listens on ``onnx_web_job_events`` (migration 0007 notifies a job's name on every
state or progress change) in one thread, and wakes the streams subscribed to that name. A stream
then reads its jobs' records through ``JobStore`` exactly as ``/api/job/status`` does, so what it
sends is always what status would say; it also reads them every ``POLL_S`` when nothing was heard,
since a notification is only a hint (see ``service.jobs.notify``).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable

from service.jobs.notify import EVENTS_CHANNEL, Notifier
from service.logs import OutageLog
from service.retries import OUTAGE_WAIT_MAX_S, OUTAGE_WAIT_S, first_line

log = logging.getLogger(__name__)

#: How long the hub's listener waits per turn (also how fast it notices ``stop``).
LISTEN_SLICE_S = 1.0
#: While the listener cannot reach the database, "listen connection lost" is logged when the
#: outage starts and then at most this often; streams poll meanwhile, so nothing else is lost.
LISTEN_LOST_LOG_EVERY_S = 60.0


def listen_retry_wait(failures: int) -> float:
    """The wait before the listener's next reconnect after ``failures`` in a row: doubling from
    ``OUTAGE_WAIT_S`` up to ``OUTAGE_WAIT_MAX_S``, as a worker waits out an outage."""
    return min(OUTAGE_WAIT_S * 2 ** min(failures - 1, 32), OUTAGE_WAIT_MAX_S)


class Subscription:
    """The job names one stream follows, and the ones changed since it last looked."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._changed: set[str] = set()
        self._ready = threading.Condition()

    def notify(self, name: str) -> None:
        with self._ready:
            self._changed.add(name)
            self._ready.notify()

    def wait(self, timeout_s: float) -> set[str]:
        """The names changed since the last call, waiting up to ``timeout_s`` for one."""
        with self._ready:
            if not self._changed:
                self._ready.wait(timeout_s)
            changed, self._changed = self._changed, set()
        return changed


class EventHub:
    """Listens once per process and wakes every subscription that follows the named job."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._lock = threading.Lock()
        self._by_name: dict[str, set[Subscription]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def subscribe(self, names: Iterable[str]) -> Subscription:
        """Follow ``names``; the listener starts with the first subscription."""
        subscription = Subscription(names)
        with self._lock:
            for name in subscription.names:
                self._by_name[name].add(subscription)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="job-events", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            for name in subscription.names:
                followers = self._by_name.get(name)
                if followers is not None:
                    followers.discard(subscription)
                    if not followers:
                        del self._by_name[name]

    def stop(self) -> None:
        """Stop listening (tests; a process that exits needs nothing)."""
        self._stopping.set()

    def _listen(self) -> None:
        notifier: Notifier | None = None
        outage = OutageLog(
            log, "listen connection lost; streams poll", "listen connection back", LISTEN_LOST_LOG_EVERY_S
        )
        while not self._stopping.is_set():
            try:
                notifier = notifier or Notifier(self._database_url, channel=EVENTS_CHANNEL)
                names = notifier.payloads(LISTEN_SLICE_S)
            except Exception as err:
                if notifier is not None:
                    notifier.close()
                notifier = None
                if self._stopping.is_set():
                    return  # stopped meanwhile: a connection ended with its database is no outage
                outage.failed(first_line(err), action="listen_lost")
                self._stopping.wait(listen_retry_wait(outage.failures))
                continue
            outage.recovered(action="listen_back")
            with self._lock:
                woken = [(name, set(self._by_name.get(name, ()))) for name in set(names)]
            for name, followers in woken:
                for subscription in followers:
                    subscription.notify(name)
        if notifier is not None:
            notifier.close()

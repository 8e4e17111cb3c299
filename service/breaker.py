"""Fail at once while a dependency is known not to answer, instead of every caller waiting it out.

A Postgres or S3 server that accepts connections and never answers costs each caller its full
timeout. Once one caller has paid it, ``Breaker`` makes the others fail at once for a cooldown,
then lets one caller at a time probe; the first call that succeeds ends the outage. The api uses
one per dependency (``service.db.ConnectionWatchdog``, ``service.storage.S3ObjectStore``), so its
threads stay free to answer 503s and probes while the dependency is away.
"""

from __future__ import annotations

import threading
import time


class Breaker:
    """An outage's state: since when calls fail at once, and who may probe."""

    def __init__(self, cooldown_s: float, probe_s: float) -> None:
        """``cooldown_s``: how long calls fail at once after a failure; ``probe_s``: how long one
        probing call may take before another caller may probe instead."""
        self.cooldown_s = cooldown_s
        self.probe_s = probe_s
        self._lock = threading.Lock()
        #: While set, calls fail at once until then; afterwards one thread at a time probes.
        self._failing_until: float | None = None
        #: The probing thread and until when it may probe.
        self._probe: tuple[int | None, float] = (None, 0.0)

    def admit(self) -> bool:
        """Whether a call may go to the dependency now (always, outside an outage)."""
        now = time.monotonic()
        with self._lock:
            if self._failing_until is None:
                return True
            thread, until = self._probe
            if thread == threading.get_ident() and now < until:
                return True
            if now < self._failing_until or now < until:
                return False
            self._probe = (threading.get_ident(), now + self.probe_s)
            return True

    def failed(self) -> None:
        """A call found the dependency not answering: fail the others at once for the cooldown."""
        with self._lock:
            self._failing_until = time.monotonic() + self.cooldown_s
            self._probe = (None, 0.0)

    def succeeded(self) -> None:
        """A call was answered: the outage, if any, is over."""
        with self._lock:
            if self._failing_until is not None:
                self._failing_until = None
                self._probe = (None, 0.0)

    @property
    def open(self) -> bool:
        """Whether an outage is known now."""
        with self._lock:
            return self._failing_until is not None

"""Take back jobs whose worker stopped heartbeating, from any live process.

A job's lease expires when its worker died, hung or lost its network; ``JobStore.rescue_expired``
puts such jobs back in the queue (or fails them, on their last attempt). Workers do it in their
maintenance loop; the api does it too (``LeaseRescuer``), so that a job whose only worker is gone
(crashed for good, frozen, scaled to zero) reads ``pending`` with a ``rescued`` error instead of
``running`` forever.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import OperationalError

from service.jobs.store import JobStore
from service.retries import first_line

log = logging.getLogger(__name__)


def rescue_expired_leases(jobs: JobStore) -> int:
    """Rescue every job whose lease expired, logging each; how many there were."""
    rescued = jobs.rescue_expired()
    for job in rescued:
        log.warning(
            "rescued a job whose lease expired",
            extra={
                "action": "rescue",
                "job": job.name,
                "attempt": job.attempt,
                "lost_by": job.worker_id,
                "state": job.state.value,
            },
        )
    return len(rescued)


class LeaseRescuer:
    """A daemon thread of an api process: ``rescue_expired_leases`` every ``interval_s``."""

    def __init__(self, jobs: JobStore, interval_s: float) -> None:
        self.jobs = jobs
        self.interval_s = interval_s
        self.stopping = threading.Event()
        #: Whether the last round failed: an outage is logged when it starts and when it ends.
        self._failing = False

    def start(self) -> LeaseRescuer:
        threading.Thread(target=self._loop, name="lease-rescuer", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.round()

    def round(self) -> None:
        """One rescue; a database outage is logged once, not every round."""
        try:
            rescue_expired_leases(self.jobs)
        except OperationalError as err:
            if not self._failing:
                log.warning("lease rescue failed", extra={"action": "rescue", "error": first_line(err)})
            self._failing = True
            return
        if self._failing:
            log.info("lease rescue works again", extra={"action": "rescue"})
        self._failing = False

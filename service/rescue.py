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
from service.logs import OutageLog
from service.retries import first_line

log = logging.getLogger(__name__)
#: While the database stays away, a failing rescue is logged at most this often.
OUTAGE_LOG_EVERY_S = 60.0


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
        self._outage = OutageLog(log, "lease rescue failed", "lease rescue works again", OUTAGE_LOG_EVERY_S)

    def start(self) -> LeaseRescuer:
        threading.Thread(target=self._loop, name="lease-rescuer", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.round()

    def round(self) -> None:
        """One rescue; a database outage is logged when it starts and ends, not every round."""
        try:
            rescue_expired_leases(self.jobs)
        except OperationalError as err:
            self._outage.failed(first_line(err), action="rescue")
            return
        self._outage.recovered(action="rescue")

"""The job states, mirroring the ``job_state`` enum of migration 0001 (see ``docs/state-machine.md``)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its lifecycle; the transitions are the statements in ``queries.sql``."""

    PENDING = "pending"  #: waiting in the queue (new, retried, released or rescued)
    RUNNING = "running"  #: pending -> running: claimed by a worker that holds the lease
    SUCCESS = "success"  #: running -> success: the live attempt recorded its outputs
    FAILED = "failed"  #: running -> failed: a final error, or out of attempts
    CANCELLED = "cancelled"  #: pending -> cancelled at once, running -> cancelled at the worker's next check

    @property
    def terminal(self) -> bool:
        """Whether the job is over; terminal rows never change state again."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILED, JobState.CANCELLED})

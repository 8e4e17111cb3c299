"""The job queue: the only code that reads or writes the ``jobs`` table.

``JobStore`` (``store.py``) runs the named statements of ``queries.sql``; ``JobState``
(``states.py``) mirrors the schema's enum; ``Notifier`` (``notify.py``) wakes idle workers.
"""

from service.jobs.notify import CHANNEL, Notifier
from service.jobs.states import TERMINAL_STATES, JobState
from service.jobs.store import ClaimedJob, CounterPair, Heartbeat, JobStore, JobView, NewJob, Rescued

__all__ = [
    "CHANNEL",
    "TERMINAL_STATES",
    "ClaimedJob",
    "CounterPair",
    "Heartbeat",
    "JobState",
    "JobStore",
    "JobView",
    "NewJob",
    "Notifier",
    "Rescued",
]

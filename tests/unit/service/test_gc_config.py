"""How old an input of no job must be before ``onnx-web gc`` deletes it, as the environment sets it
(``tests/integration/test_gc.py`` holds what the collector makes of it)."""

from __future__ import annotations

import pytest

from service.config import GC_INPUT_AGE_S, GC_INPUT_MIN_AGE_S, Config
from service.db import API_DEADLINE_S, CONNECT_TIMEOUT_S, POOL_TIMEOUT_S
from service.errors import ConfigError

#: Linux's default ``tcp_retries2`` (15) gives up on unacknowledged data after about 924.6 s.
LINUX_RETRANSMIT_S = 925.0


def test_the_age_is_read_from_the_environment() -> None:
    assert Config().gc_input_age_s == GC_INPUT_AGE_S
    assert Config.from_env({"ONNX_WEB_GC_INPUT_AGE_S": "7200"}).gc_input_age_s == 7200.0


def test_an_age_a_submission_in_flight_could_reach_stops_the_process() -> None:
    with pytest.raises(ConfigError, match="gc_input_age_s must be at least"):
        Config.from_env({"ONNX_WEB_GC_INPUT_AGE_S": str(GC_INPUT_MIN_AGE_S - 1)})


def test_the_least_age_outlasts_every_wait_of_a_submission_commit() -> None:
    """A submission's row commits within the api's database waits, or a COMMIT it gave up on
    reaches Postgres while the kernel still retransmits it; either is over before the least age."""
    commit_s = POOL_TIMEOUT_S + CONNECT_TIMEOUT_S + API_DEADLINE_S
    assert commit_s + LINUX_RETRANSMIT_S < GC_INPUT_MIN_AGE_S
    assert GC_INPUT_AGE_S >= GC_INPUT_MIN_AGE_S

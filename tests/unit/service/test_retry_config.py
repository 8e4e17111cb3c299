"""The backoff between a job's attempts, as the environment sets it (``tests/integration/test_queue.py``
holds what the queue makes of it)."""

from __future__ import annotations

import pytest

from service.config import RETRY_DELAY_MAX_S, RETRY_DELAY_S, Config
from service.errors import ConfigError


def test_the_backoff_is_on_by_default_and_read_from_the_environment() -> None:
    assert (Config().retry_delay_s, Config().retry_delay_max_s) == (RETRY_DELAY_S, RETRY_DELAY_MAX_S)
    assert RETRY_DELAY_S > 0
    config = Config.from_env({"ONNX_WEB_RETRY_DELAY_S": "0.5", "ONNX_WEB_RETRY_DELAY_MAX_S": "8"})
    assert (config.retry_delay_s, config.retry_delay_max_s) == (0.5, 8.0)
    assert Config.from_env({"ONNX_WEB_RETRY_DELAY_S": "0"}).retry_delay_s == 0.0


@pytest.mark.parametrize(
    "env",
    [
        {"ONNX_WEB_RETRY_DELAY_S": "-1"},
        {"ONNX_WEB_RETRY_DELAY_S": "30", "ONNX_WEB_RETRY_DELAY_MAX_S": "10"},
    ],
)
def test_a_negative_delay_or_one_past_its_maximum_stops_the_process(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="the retry delay must be 0 or more and at most its maximum"):
        Config.from_env(env)

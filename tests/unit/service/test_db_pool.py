"""The Postgres pool of a long-lived process is bounded by ``Config``, read from the environment."""

from __future__ import annotations

import pytest

from service.config import Config
from service.db import config_engine
from service.errors import ConfigError

URL = "postgresql://api@127.0.0.1:1/none"


def test_the_pool_bounds_come_from_the_environment() -> None:
    config = Config.from_env(
        {"DATABASE_URL": URL, "ONNX_WEB_DB_POOL_SIZE": "3", "ONNX_WEB_DB_MAX_OVERFLOW": "0"}
    )

    # Engines connect on first use: building one opens nothing.
    pool = config_engine(config).pool

    assert (pool.size(), pool._max_overflow) == (3, 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "environ",
    [{"ONNX_WEB_DB_POOL_SIZE": "0"}, {"ONNX_WEB_DB_MAX_OVERFLOW": "-1"}],
)
def test_a_pool_without_room_is_refused_at_start(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"ONNX_WEB_DB_POOL_SIZE|pool"):
        Config.from_env(environ)

"""Two ``onnx-web run`` stacks on one host keep apart what one stack's files are: each data folder has
its model cache (which links the stack's own models folder in), unless ``ONNX_WEB_MODEL_CACHE`` says
otherwise."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest

from service.stack import MODEL_CACHE_FOLDER
from tests.integration.stack_process import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def model_caches(data_dir: Path, models: Path, env: dict[str, str] | None = None) -> list[str]:
    """Start a stack with one worker, stop it: the ``ONNX_WEB_MODEL_CACHE`` its api and worker got."""
    stack = RunningStack(data_dir, models=models, workers=1, env=env)
    try:
        stack.wait_ready()
        processes = [stack.api(), *stack.workers()]
        caches = [process.environ().get("ONNX_WEB_MODEL_CACHE", "unset") for process in processes]
        stack.signal_group(signal.SIGTERM)
        assert stack.wait_exit(60) == 0
        return caches
    finally:
        stack.close()


def test_each_data_folder_gets_its_own_model_cache(data_dir: Path, models: Path) -> None:
    assert model_caches(data_dir, models) == [str(data_dir / MODEL_CACHE_FOLDER)] * 2


def test_a_model_cache_in_the_environment_wins(data_dir: Path, models: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="onnx-web-shared-cache-") as shared:
        assert model_caches(data_dir, models, {"ONNX_WEB_MODEL_CACHE": shared}) == [shared] * 2

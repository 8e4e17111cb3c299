"""Fixtures shared by the integration tests that run real worker processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.models.demo import build_demo_models


@pytest.fixture(scope="session")
def models() -> Iterator[Path]:
    """The demo models, built once per session (outside basetemp, which other sessions prune).

    Modules that need another models folder define their own ``models``, which wins.
    """
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-test-models-"))
    try:
        build_demo_models(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder for ``onnx-web run`` (``stack_process.RunningStack``), not made yet.

    Not under pytest's basetemp: as root, Postgres runs as another user, and basetemp is 0700.
    """
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-run-"))
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)

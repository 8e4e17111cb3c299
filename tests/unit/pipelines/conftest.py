"""Fixtures for the diffusion tests: the tiny demo models, built once per test session."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.diffusion.model import DiffusionModel, load_model
from pipelines.models.demo import DEMO_MODELS, build_demo_models
from pipelines.models.demo import torch_parts as demo_torch_parts
from pipelines.models.sessions import SessionCache, SessionSettings

DEMO_MODEL = DEMO_MODELS[0].name
INPAINT_MODEL = DEMO_MODELS[1].name


@pytest.fixture(scope="session")
def models_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding every demo diffusion model (and their torch sources)."""
    path = tmp_path_factory.mktemp("models")
    build_demo_models(path)
    return path


@pytest.fixture(scope="session")
def sessions() -> SessionCache:
    """One session cache for the whole run, as a worker keeps one across jobs."""
    return SessionCache(max_models=4, settings=SessionSettings(providers=("CPUExecutionProvider",)))


@pytest.fixture(scope="session")
def demo_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    """The txt2img demo model on ONNX Runtime."""
    return load_model(models_path, DEMO_MODEL, sessions)


@pytest.fixture(scope="session")
def inpaint_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    """The 9-channel inpainting demo model on ONNX Runtime."""
    return load_model(models_path, INPAINT_MODEL, sessions)


@pytest.fixture(scope="session")
def torch_parts(models_path: Path) -> Callable[[str], dict[str, Any]]:
    """The PyTorch modules demo model ``name`` was exported from (the very same weights), loaded once."""
    return functools.cache(functools.partial(demo_torch_parts, models_path))

"""Fixtures for the diffusion tests: the tiny demo models, built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.diffusion.model import DiffusionModel, load_model
from pipelines.models.demo import DEMO_MODELS, build_demo_models, torch_source_path
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


def _torch_parts(source: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "vae": AutoencoderKL.from_pretrained(source / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(str(source / "tokenizer")),
        "unet": UNet2DConditionModel.from_pretrained(source / "unet").eval(),
    }


@pytest.fixture(scope="session")
def torch_parts(models_path: Path) -> dict[str, Any]:
    """The PyTorch modules the ONNX demo model was exported from (the very same weights)."""
    return _torch_parts(torch_source_path(models_path, DEMO_MODEL))


@pytest.fixture(scope="session")
def inpaint_torch_parts(models_path: Path) -> dict[str, Any]:
    """The PyTorch modules of the inpainting demo model."""
    return _torch_parts(torch_source_path(models_path, INPAINT_MODEL))

"""The api refuses pix2pix on a model without an InstructPix2Pix UNet before any job exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.models.registry import ModelRegistry
from service.chains import require_runnable
from service.errors import InvalidParams

PIX2PIX, PLAIN, UNKNOWN = "stable-diffusion-ip2p", "stable-diffusion-plain", "stable-diffusion-elsewhere"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """Three SD folders: an 8-channel UNet, a 4-channel one, and one converted without the UNet config."""
    for name, channels in ((PIX2PIX, 8), (PLAIN, 4), (UNKNOWN, None)):
        folder = tmp_path / name
        (folder / "unet").mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "OnnxStableDiffusionPipeline"}))
        if channels is not None:
            (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": channels}))
    return ModelRegistry(tmp_path)


def chain(stage_type: str, model: str, pipeline: str) -> dict[str, Any]:
    return {
        "stages": [{"name": "edit", "type": stage_type, "params": {"model": model, "pipeline": pipeline}}]
    }


def refusal(registry: ModelRegistry, stage_type: str, model: str, pipeline: str) -> InvalidParams:
    with pytest.raises(InvalidParams) as caught:
        require_runnable(chain(stage_type, model, pipeline), registry, {"edit": "stages[0]"})
    return caught.value


def test_pix2pix_runs_on_an_instruct_pix2pix_model_in_img2img(registry: ModelRegistry) -> None:
    require_runnable(chain("blend-img2img", PIX2PIX, "pix2pix"), registry)
    # A folder that does not say what its UNet takes is left to the worker.
    require_runnable(chain("blend-img2img", UNKNOWN, "pix2pix"), registry)
    require_runnable(chain("blend-img2img", PLAIN, "img2img"), registry)


def test_pix2pix_on_another_model_is_a_400_listing_the_instruct_pix2pix_models(
    registry: ModelRegistry,
) -> None:
    error = refusal(registry, "blend-img2img", PLAIN, "pix2pix")
    assert error.field == "stages[0].params.model"
    assert error.rule == (
        f"pipeline pix2pix needs an InstructPix2Pix model (a UNet with 8 input channels); {PLAIN} has 4; "
        f"InstructPix2Pix models: {PIX2PIX}"
    )


def test_an_instruct_pix2pix_model_needs_pipeline_pix2pix_in_img2img(registry: ModelRegistry) -> None:
    error = refusal(registry, "blend-img2img", PIX2PIX, "img2img")
    assert error.field == "stages[0].params.pipeline"
    assert error.rule == f"{PIX2PIX} is an InstructPix2Pix model: it runs only with pipeline pix2pix"
    error = refusal(registry, "source-txt2img", PIX2PIX, "pix2pix")
    assert error.rule == "pix2pix runs in blend-img2img, not in source-txt2img"

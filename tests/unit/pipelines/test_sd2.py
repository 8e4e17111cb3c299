"""The SD 2.1 (768-v) demo model: its architecture, v-prediction everywhere, and diffusers' images.

The SD 2.x family shares SD 1.x's pipeline: only the weights' shapes and the scheduler config's
``prediction_type`` differ. diffusers' reference pipelines here get their scheduler as diffusers
itself loads it from the torch source folder, so a ``prediction_type`` our scheduler construction
dropped would show as a difference in the images, not hide on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.schedulers import SCHEDULER_CLASSES, SCHEDULER_NAMES, make_scheduler
from pipelines.diffusion.txt2img import txt2img
from pipelines.gpu.batch import CpuDenoiser, Txt2ImgJob, txt2img_batch
from pipelines.models.demo import DEMO_SD21, OPEN_CLIP_DEMO_LAYERS, OPEN_CLIP_PAD_TOKEN, torch_source_path
from pipelines.models.registry import ModelRegistry, model_family
from pipelines.models.sessions import SessionCache
from tests.unit.pipelines.images import gradient, mask_image, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, from_our_noise, run_diffusers
from tests.unit.pipelines.test_diffusion_img2img import torch_reference as img2img_reference
from tests.unit.pipelines.test_diffusion_inpaint import torch_reference as inpaint_reference

#: Schedulers that cannot read ``prediction_type`` and so refuse a v-prediction model.
EPSILON_ONLY = ("ipndm",)
V_SCHEDULERS = [name for name in SCHEDULER_NAMES if name not in EPSILON_ONLY]


@pytest.fixture(scope="module")
def sd21_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    """The SD 2.1 demo model on ONNX Runtime."""
    return load_model(models_path, DEMO_SD21, sessions)


def sd21_generation(**values: Any) -> Generation:
    return demo_generation(model=DEMO_SD21, **values)


@pytest.fixture
def diffusers_scheduler(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``run_diffusers`` load its scheduler from the torch source folder, by diffusers alone."""
    import diffusers

    from tests.unit.pipelines import reference

    source = torch_source_path(models_path, DEMO_SD21) / "scheduler"

    def from_source(name: str, config: Any, *, seed: int | None = None) -> Any:
        return getattr(diffusers, SCHEDULER_CLASSES[name]).from_pretrained(source)

    monkeypatch.setattr(reference, "make_scheduler", from_source)


def test_the_demo_has_sd21s_architecture(models_path: Path) -> None:
    source = torch_source_path(models_path, DEMO_SD21)
    unet = json.loads((source / "unet" / "config.json").read_text())
    text = json.loads((source / "text_encoder" / "config.json").read_text())
    assert unet["use_linear_projection"] is True
    assert unet["upcast_attention"] is True
    assert isinstance(unet["attention_head_dim"], list)
    assert unet["cross_attention_dim"] == text["hidden_size"]
    assert text["hidden_act"] == "gelu"
    assert text["num_hidden_layers"] == OPEN_CLIP_DEMO_LAYERS - 1
    tokenizer = json.loads((models_path / DEMO_SD21 / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["pad_token"] == OPEN_CLIP_PAD_TOKEN
    index = json.loads((source / "model_index.json").read_text())
    assert (index["_class_name"], index["scheduler"]) == (
        "StableDiffusionPipeline",
        ["diffusers", "DDIMScheduler"],
    )
    converted = json.loads((models_path / DEMO_SD21 / "scheduler" / "scheduler_config.json").read_text())
    assert converted["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("name", V_SCHEDULERS)
def test_every_scheduler_keeps_v_prediction(sd21_model: DiffusionModel, name: str) -> None:
    assert sd21_model.scheduler(name, seed=1).config.prediction_type == "v_prediction"


@pytest.mark.parametrize("name", EPSILON_ONLY)
def test_a_scheduler_without_v_prediction_is_refused(sd21_model: DiffusionModel, name: str) -> None:
    with pytest.raises(ValueError, match="cannot run a model predicting 'v_prediction'"):
        sd21_model.scheduler(name, seed=1)


@pytest.mark.parametrize(
    "scheduler", ["ddim", "euler", "euler-a", "dpm-multi", "unipc-multi", "pndm", "heun"]
)
def test_txt2img_matches_diffusers_torch_pipeline(
    sd21_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    diffusers_scheduler: None,
    scheduler: str,
) -> None:
    from diffusers import StableDiffusionPipeline

    gen = sd21_generation(scheduler=scheduler)
    reference = run_diffusers(
        StableDiffusionPipeline, torch_parts(DEMO_SD21), sd21_model, gen, **from_our_noise(gen)
    )
    assert_matches(pixels(txt2img(Run(sd21_model, gen))), reference, (1, 48, 64, 3))


def test_the_velocity_is_not_taken_for_noise(
    sd21_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same weights read as an epsilon model give another image: v-prediction is in effect."""
    gen = sd21_generation()
    as_velocity = pixels(txt2img(Run(sd21_model, gen)))
    config = {**sd21_model_config(sd21_model), "prediction_type": "epsilon"}
    monkeypatch.setattr(
        DiffusionModel, "scheduler", lambda self, name, seed: make_scheduler(name, config, seed=seed)
    )
    assert np.abs(pixels(txt2img(Run(sd21_model, gen))) - as_velocity).max() > 10


def sd21_model_config(model: DiffusionModel) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model.folder / "scheduler" / "scheduler_config.json").read_text())
    return config


@pytest.mark.parametrize(
    ("scheduler", "strength", "batch"),
    [("ddim", 0.5, 1), ("euler-a", 0.7, 1), ("dpm-multi", 0.6, 2), ("unipc-multi", 0.8, 1), ("pndm", 1.0, 1)],
)
def test_img2img_matches_diffusers_torch_pipeline(
    sd21_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    diffusers_scheduler: None,
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
    strength: float,
    batch: int,
) -> None:
    gen = sd21_generation(scheduler=scheduler, batch=batch, seed=5, steps=6, cfg=5.0)
    reference = img2img_reference(torch_parts(DEMO_SD21), sd21_model, gen, strength, monkeypatch)
    ours = pixels(img2img(Run(sd21_model, gen), gradient(), strength))
    assert_matches(ours, reference, (batch, 48, 64, 3))


@pytest.mark.parametrize("scheduler", ["ddim", "euler-a", "dpm-multi"])
def test_inpainting_matches_diffusers_torch_pipeline(
    sd21_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    diffusers_scheduler: None,
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
) -> None:
    """A 4-channel UNet puts the kept region back, noised by the scheduler, after every step."""
    gen = sd21_generation(scheduler=scheduler, prompt="a red door", seed=11)
    reference = inpaint_reference(torch_parts(DEMO_SD21), sd21_model, gen, monkeypatch)
    ours = pixels(inpaint(Run(sd21_model, gen), gradient(), mask_image()))
    assert_matches(ours, reference, (1, 48, 64, 3))


def test_the_batched_loop_matches_the_single_job_pipeline(sd21_model: DiffusionModel) -> None:
    """The worker's cross-job batching steps the velocity as ``txt2img`` does."""
    job = sd21_generation(scheduler="dpm-multi", batch=2, seed=5)
    reference = pixels(txt2img(Run(sd21_model, job)))
    jobs = [Txt2ImgJob(job), Txt2ImgJob(sd21_generation(scheduler="dpm-multi", seed=6))]
    outcome = txt2img_batch(sd21_model, jobs, denoiser=CpuDenoiser(sd21_model))[0]
    assert outcome.error is None
    assert np.abs(pixels(outcome.images) - reference).max() <= 1


def test_registry_lists_it_as_an_sd_model(models_path: Path) -> None:
    assert model_family(models_path / DEMO_SD21) == "sd"
    registry = ModelRegistry(models_path)
    assert DEMO_SD21 in registry.models()["diffusion"]
    listed = json.loads((models_path / "extras.json").read_text())["diffusion"]
    entry = next(entry for entry in listed if entry["name"] == DEMO_SD21)
    assert entry["pipeline"] == "txt2img"
    assert entry["hash"] == registry.model_hash(DEMO_SD21)

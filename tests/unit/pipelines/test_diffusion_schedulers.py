"""Scheduler names and construction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.diffusion.model import DiffusionModel
from pipelines.diffusion.schedulers import (
    SCHEDULER_NAMES,
    load_scheduler_config,
    make_scheduler,
    step_arguments,
)
from tests.contract import SCHEDULERS


def test_names_are_onnx_webs_in_its_order() -> None:
    assert list(SCHEDULER_NAMES) == SCHEDULERS


def test_names_import_without_torch_or_diffusers() -> None:
    code = (
        "import sys, pipelines.diffusion.schedulers; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_builds_from_the_model_config(demo_model: DiffusionModel, name: str) -> None:
    config = load_scheduler_config(demo_model.folder)
    scheduler = make_scheduler(name, config)
    assert scheduler.config.num_train_timesteps == 1000
    if "beta_start" in scheduler.config:
        assert scheduler.config.beta_start == config["beta_start"]


def test_unknown_scheduler_is_refused(demo_model: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'karras-ve'"):
        make_scheduler("karras-ve", load_scheduler_config(demo_model.folder))


def test_dpm_sde_noise_is_seeded(demo_model: DiffusionModel) -> None:
    scheduler = make_scheduler("dpm-sde", load_scheduler_config(demo_model.folder), seed=99)
    assert scheduler.noise_sampler_seed == 99


def test_step_arguments_pass_only_what_step_accepts(demo_model: DiffusionModel) -> None:
    config = load_scheduler_config(demo_model.folder)
    generator = torch.Generator()
    assert step_arguments(make_scheduler("ddim", config), eta=0.5, generator=generator) == {
        "eta": 0.5,
        "generator": generator,
    }
    assert step_arguments(make_scheduler("euler-a", config), eta=0.5, generator=generator) == {
        "generator": generator
    }
    assert step_arguments(make_scheduler("pndm", config), eta=0.5, generator=generator) == {}


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_the_api_s_tables_of_what_a_scheduler_cannot_do_match_diffusers(name: str) -> None:
    """The api refuses from these tables (it has no diffusers to ask); they must say what it says."""
    import inspect

    import diffusers

    from pipelines.diffusion.schedulers import NO_IMAGE_START, NOISE_PREDICTION_ONLY, SCHEDULER_CLASSES

    scheduler_class = getattr(diffusers, SCHEDULER_CLASSES[name])
    assert (name in NO_IMAGE_START) == (not hasattr(scheduler_class, "add_noise"))
    reads = "prediction_type" in inspect.signature(scheduler_class.__init__).parameters
    assert (name in NOISE_PREDICTION_ONLY) == (not reads)

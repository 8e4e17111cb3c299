"""InstructPix2Pix on its demo model, against diffusers' ``StableDiffusionInstructPix2PixPipeline``.

diffusers runs on the very weights the demo was exported from, with our scheduler and starting
noise; its VAE encoder already takes the latent mode for the source image, as ours does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.model import Callbacks, DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.pix2pix import pix2pix
from pipelines.models.demo import DEMO_MODELS, DEMO_PIX2PIX
from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, from_our_noise, run_diffusers
from tests.unit.pipelines.resolved import RESOLVED, run_stage

BASE = demo_generation(
    model=DEMO_PIX2PIX, prompt="make it a painting of a house", negative_prompt="blurry", seed=8, steps=5
)


@pytest.fixture(scope="module")
def pix2pix_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_PIX2PIX, sessions)


def diffusers_pix2pix(
    parts: dict[str, Any], model: DiffusionModel, gen: Generation, image_guidance: float
) -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    # One source per image: diffusers deprecates repeating a single one for a batch.
    sources = [gradient(gen.width, gen.height)] * gen.batch
    return run_diffusers(
        StableDiffusionInstructPix2PixPipeline,
        parts,
        model,
        gen,
        image=sources,
        image_guidance_scale=image_guidance,
        latents=from_our_noise(gen)["latents"],
    )


@pytest.mark.parametrize(
    ("changes", "image_guidance"),
    [
        pytest.param({"scheduler": "ddim"}, 1.5, id="ddim"),
        # Step noise from the seeded generator, and the api's largest strength.
        pytest.param({"scheduler": "euler-a"}, 1.0, id="euler-a"),
        # A multistep scheduler, two images.
        pytest.param({"scheduler": "dpm-multi", "batch": 2}, 1.2, id="dpm-multi-batch"),
        # Below 1 the image guidance turns guidance off altogether, as in diffusers.
        pytest.param({"scheduler": "ddim"}, 0.5, id="no-guidance"),
    ],
)
def test_pix2pix_matches_diffusers_pipeline(
    pix2pix_model: DiffusionModel,
    torch_parts: Callable[[str], dict[str, Any]],
    changes: dict[str, Any],
    image_guidance: float,
) -> None:
    gen = dataclasses.replace(BASE, **changes)
    reference = diffusers_pix2pix(torch_parts(DEMO_PIX2PIX), pix2pix_model, gen, image_guidance)
    ours = pixels(pix2pix(Run(pix2pix_model, gen), gradient(gen.width, gen.height), image_guidance))
    assert_matches(ours, reference, (gen.batch, gen.height, gen.width, 3))


def test_image_guidance_changes_the_image(pix2pix_model: DiffusionModel) -> None:
    def edit(image_guidance: float) -> np.ndarray:
        return pixels(pix2pix(Run(pix2pix_model, BASE), gradient(), image_guidance))

    assert np.abs(edit(1.0) - edit(1.5)).mean() > 1
    # Below 1 there is no guidance: any such scale gives the one prompt-only image.
    assert np.array_equal(edit(0.2), edit(0.9))


def test_guidance_runs_three_rows_per_step_and_none_without(pix2pix_model: DiffusionModel) -> None:
    rows: list[int] = []

    class Counting:
        def __init__(self, session: Any) -> None:
            self.session = session

        def get_inputs(self) -> Any:
            return self.session.get_inputs()

        def get_outputs(self) -> Any:
            return self.session.get_outputs()

        def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
            rows.append(len(feeds["sample"]))
            assert feeds["sample"].shape[1] == 8
            return self.session.run(outputs, feeds)

    class Sessions:
        def get(self, path: Path, *args: Any) -> Any:
            session = pix2pix_model.sessions.get(path, *args)
            return Counting(session) if path.parent.name == "unet" else session

    model = dataclasses.replace(pix2pix_model, sessions=Sessions())
    steps: list[int] = []
    pix2pix(Run(model, BASE, Callbacks(on_step=steps.append)), gradient(), 1.5)
    # Every step of the schedule, whatever the strength: the strength guides, it does not shorten.
    assert rows == [3] * BASE.steps and sum(steps) == BASE.steps
    rows.clear()
    pix2pix(Run(model, BASE), gradient(), 0.5)
    assert rows == [1] * BASE.steps


def pix2pix_params(**changes: Any) -> dict[str, Any]:
    return {
        **RESOLVED,
        "model": DEMO_PIX2PIX,
        "pipeline": "pix2pix",
        "prompt": "turn it to winter",
        "seed": 3,
        "steps": 4,
        "cfg": 7.0,
        "strength": 1.0,
        **changes,
    }


def test_stage_runs_pix2pix_over_every_step(
    models_path: Path, sessions: SessionCache, pix2pix_model: DiffusionModel
) -> None:
    counted: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=counted.append)
    params = pix2pix_params()
    [result] = run_stage(blend_img2img.STAGE, ctx, params, [StageImage(gradient(64, 48), {})])
    assert sum(counted) == 4 == blend_img2img.STAGE.estimate(params)
    assert result.image.size == (64, 48)
    assert result.metadata["params"]["pipeline"] == "pix2pix"
    assert result.metadata["params"]["strength"] == 1.0
    gen = Generation.from_params(params, prompt="turn it to winter", width=64, height=64)
    # The stage pads 64x48 to the UNet's 64-px grid, runs, then crops back.
    from pipelines.diffusion.model import pad_to_grid

    [expected] = pix2pix(Run(pix2pix_model, gen), pad_to_grid(gradient(64, 48)), 1.0)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected.crop((0, 0, 64, 48))))


def test_pix2pix_needs_an_instruct_pix2pix_unet_and_that_unet_needs_pix2pix(
    models_path: Path, sessions: SessionCache, demo_model: DiffusionModel, pix2pix_model: DiffusionModel
) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    base = DEMO_MODELS[0].name
    with pytest.raises(ValueError, match=f"needs an InstructPix2Pix model .*; {base} has 4"):
        run_stage(blend_img2img.STAGE, ctx, pix2pix_params(model=base), [StageImage(gradient(), {})])
    with pytest.raises(ValueError, match="is an InstructPix2Pix model: run it with pipeline pix2pix"):
        run_stage(blend_img2img.STAGE, ctx, pix2pix_params(pipeline="img2img"), [StageImage(gradient(), {})])
    with pytest.raises(ValueError, match="needs an InstructPix2Pix model"):
        pix2pix(Run(demo_model, dataclasses.replace(BASE, model=base)), gradient(), 1.0)
    # img2img on the plain model still runs as it did.
    img2img(Run(demo_model, dataclasses.replace(BASE, model=base, steps=2)), gradient(), 0.5)


def test_registry_reads_unet_channels_from_the_converted_folder(models_path: Path) -> None:
    registry = ModelRegistry(models_path)
    assert registry.unet_channels(DEMO_PIX2PIX) == 8
    assert registry.unet_channels(DEMO_MODELS[0].name) == 4
    assert registry.unet_channels(DEMO_MODELS[1].name) == 9
    assert registry.unet_channels("no-such-model") is None

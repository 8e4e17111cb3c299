"""Cross-job batching on the CPU: a job's pixels do not depend on its batch mates, and each job
keeps its own seed, prompt, guidance, progress and cancellation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageCancelled
from pipelines.diffusion.model import DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.txt2img import txt2img
from pipelines.gpu.batch import CpuDenoiser, Txt2ImgJob, txt2img_batch
from pipelines.models.demo import DEMO_SDXL
from pipelines.models.sessions import SessionCache
from tests.unit.pipelines.reference import demo_generation

#: Pixel levels two runs may differ by: a larger UNet batch may round its matrix products differently.
TOLERANCE = 1
#: What these tests generate unless they say otherwise.
GENERATION = demo_generation(
    scheduler="euler-a", prompt="a photo of a cat", negative_prompt=None, seed=42, steps=4, cfg=6.0
)


def generation(**changes: Any) -> Generation:
    return dataclasses.replace(GENERATION, **changes)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_job_gives_the_same_pixels_batched_or_alone(demo_model: DiffusionModel) -> None:
    """Ancestral sampling draws step noise too, so seeds matter at every step, not only at the start."""
    jobs = [
        Txt2ImgJob(generation(seed=1, prompt="a red house", cfg=4.0)),
        Txt2ImgJob(generation(seed=42, batch=2)),
        Txt2ImgJob(generation(seed=7, prompt="a dog", negative_prompt="blurry", cfg=9.0)),
    ]
    together = txt2img_batch(demo_model, jobs, denoiser=CpuDenoiser(demo_model))
    for job, outcome in zip(jobs, together, strict=True):
        alone = txt2img_batch(demo_model, [job], denoiser=CpuDenoiser(demo_model))[0]
        assert outcome.error is None and len(outcome.images) == job.generation.batch
        for batched, single in zip(outcome.images, alone.images, strict=True):
            assert np.abs(pixels(batched) - pixels(single)).max() <= TOLERANCE
    assert np.abs(pixels(together[0].images[0]) - pixels(together[2].images[0])).max() > 10


@pytest.mark.parametrize(
    "prompt", ["a photo of a cat", "a photo of a cat <reseed:0:0:32:32:9>", "a photo of a (cat|dog|fox)"]
)
def test_the_batched_loop_matches_the_single_job_pipeline(demo_model: DiffusionModel, prompt: str) -> None:
    """The batched path makes the images ``txt2img`` (the reference-matched path) makes, its
    ``<reseed>`` tokens and ``(a|b)`` alternatives included (the GPU route of txt2img runs it)."""
    job = generation(seed=5, scheduler="dpm-multi", batch=2, prompt=prompt, alternatives=True)
    reference = txt2img(Run(demo_model, job))
    outcome = txt2img_batch(
        demo_model, [Txt2ImgJob(job), Txt2ImgJob(generation(seed=6, scheduler="dpm-multi"))]
    )[0]
    for batched, single in zip(outcome.images, reference, strict=True):
        assert np.abs(pixels(batched) - pixels(single)).max() <= TOLERANCE


def test_each_job_counts_its_own_steps_and_a_cancelled_job_leaves_alone(demo_model: DiffusionModel) -> None:
    steps = {"kept": 0, "cancelled": 0}

    def cancel() -> None:
        if steps["cancelled"] >= 2:
            raise StageCancelled()

    def count(name: str) -> Any:
        return lambda n: steps.__setitem__(name, steps[name] + n)

    jobs = [
        Txt2ImgJob(generation(seed=1, scheduler="heun"), on_step=count("kept")),
        Txt2ImgJob(generation(seed=2, scheduler="heun"), on_step=count("cancelled"), check_cancelled=cancel),
    ]
    kept, cancelled = txt2img_batch(demo_model, jobs)
    assert steps == {"kept": 4, "cancelled": 2}
    assert isinstance(cancelled.error, StageCancelled) and not cancelled.images
    assert kept.error is None and len(kept.images) == 1
    alone = txt2img_batch(demo_model, [jobs[0]])[0].images[0]
    assert np.abs(pixels(kept.images[0]) - pixels(alone)).max() <= TOLERANCE


def test_prompts_of_different_lengths_run_as_separate_groups(demo_model: DiffusionModel) -> None:
    long_prompt = " ".join(["a red house by the sea"] * 20)
    jobs = [Txt2ImgJob(generation(prompt=long_prompt)), Txt2ImgJob(generation(seed=3))]
    together = txt2img_batch(demo_model, jobs)
    alone = txt2img_batch(demo_model, jobs[:1])[0]
    assert np.abs(pixels(together[0].images[0]) - pixels(alone.images[0])).max() <= TOLERANCE


@pytest.mark.parametrize("change", [{"width": 32}, {"steps": 3}, {"scheduler": "ddim"}])
def test_incompatible_jobs_are_refused(demo_model: DiffusionModel, change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="differ"):
        txt2img_batch(demo_model, [Txt2ImgJob(generation()), Txt2ImgJob(generation(**change))])


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_SDXL, sessions)


def test_sdxl_jobs_share_unet_calls_and_each_gets_what_txt2img_sdxl_makes(sdxl_model: DiffusionModel) -> None:
    """Each SDXL job keeps its own pooled text and size conditioning rows beside its text states;
    a job without a negative prompt gets SDXL's zeros, as alone."""
    from pipelines.diffusion.sdxl import txt2img_sdxl

    base = generation(model=DEMO_SDXL, scheduler="euler", steps=4)
    gens = [
        dataclasses.replace(base, seed=3, prompt="a red house", cfg=4.0, negative_prompt="blurry"),
        dataclasses.replace(base, seed=8, prompt="a dog on a beach", cfg=7.0),
        dataclasses.replace(base, seed=5, prompt="a cat", cfg=1.0),
    ]
    latents: list[list[str]] = [[] for _ in gens]
    jobs = [
        Txt2ImgJob(gen, on_latents=lambda step, family, get, seen=seen: seen.append(family))
        for gen, seen in zip(gens, latents, strict=True)
    ]
    counting = CountingDenoiser(sdxl_model)
    outcomes = txt2img_batch(sdxl_model, jobs, denoiser=counting)
    assert counting.rows == [2 + 2 + 1] * 4  # two guided jobs and one at cfg 1, one call per step
    assert latents == [["sdxl"] * 4] * 3
    for gen, outcome in zip(gens, outcomes, strict=True):
        assert outcome.error is None
        alone = txt2img_sdxl(Run(sdxl_model, gen))
        assert np.abs(pixels(outcome.images[0]) - pixels(alone[0])).max() <= TOLERANCE
    assert np.abs(pixels(outcomes[0].images[0]) - pixels(outcomes[1].images[0])).max() > 10


class CountingDenoiser(CpuDenoiser):
    """The CPU denoiser, recording the rows and inputs of each UNet call."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__(model)
        self.rows: list[int] = []

    def predict_noise(self, sample: Any, timestep: Any, conditioning: Mapping[str, Any]) -> Any:
        self.rows.append(len(sample))
        assert {len(value) for value in conditioning.values()} == {len(sample)}
        return super().predict_noise(sample, timestep, conditioning)

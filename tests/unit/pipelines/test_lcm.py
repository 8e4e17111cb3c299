"""Few-step models: an LCM-distilled UNet, and turbo-style trailing schedules with cfg 1.

The LCM demo is built here, not by the demo builder: the base demo's torch parts with a UNet that
embeds the guidance scale (``time_cond_proj_dim``), exported by the converter as any model is, and
checked against diffusers' ``LatentConsistencyModelPipeline`` on the very same weights.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.lcm import TIMESTEP_COND, LcmRun, guidance_embedding, lcm_run, lcm_width
from pipelines.diffusion.model import DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.schedulers import SCHEDULER_CLASSES, make_scheduler
from pipelines.diffusion.txt2img import txt2img
from pipelines.gpu.batch import CpuDenoiser, Txt2ImgJob, txt2img_batch
from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import DEMO_MODELS, SD15_SCHEDULER_CONFIG, demo_unet, torch_source_path, write_json
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img, source_txt2img
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import (
    NO_SAFETY_CHECKER,
    assert_matches,
    demo_generation,
    from_our_noise,
    run_diffusers,
)
from tests.unit.pipelines.resolved import IMAGE, RESOLVED, run_stage

LCM_MODEL = "stable-diffusion-lcm-demo"
TURBO_MODEL = "stable-diffusion-turbo-demo"
#: Width of the demo's guidance-scale embedding (LCM Dreamshaper v7 has 256).
LCM_WIDTH = 16
#: An LCM-distilled model's scheduler as its release ships it: SD 1.5's noise schedule, LCM steps.
LCM_SCHEDULER_CONFIG = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "LCMScheduler",
    "original_inference_steps": 50,
}
#: SD-turbo's scheduler: Euler over "trailing" timesteps, so one step starts at t=999.
TURBO_SCHEDULER_CONFIG = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "EulerDiscreteScheduler",
    "timestep_spacing": "trailing",
}


@pytest.fixture(scope="module")
def few_step_models(models_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the LCM demo (converted) and a turbo-style copy of the base demo."""
    models = tmp_path_factory.mktemp("few-step-models")
    source = models / ".torch" / LCM_MODEL
    shutil.copytree(torch_source_path(models_path, DEMO_MODELS[0].name), source)
    shutil.rmtree(source / "unet")
    demo_unet(time_cond_proj_dim=LCM_WIDTH).save_pretrained(source / "unet")
    write_json(source / "scheduler" / "scheduler_config.json", LCM_SCHEDULER_CONFIG)
    convert_diffusers_folder(source, models / LCM_MODEL)
    # A turbo model is an ordinary model with a trailing schedule: the base demo, so configured.
    shutil.copytree(models_path / DEMO_MODELS[0].name, models / TURBO_MODEL)
    write_json(models / TURBO_MODEL / "scheduler" / "scheduler_config.json", TURBO_SCHEDULER_CONFIG)
    return models


@pytest.fixture(scope="module")
def lcm_model(few_step_models: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(few_step_models, LCM_MODEL, sessions)


@pytest.fixture(scope="module")
def lcm_parts(few_step_models: Path, torch_parts: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    return {
        **torch_parts(DEMO_MODELS[0].name),
        "unet": diffusers.UNet2DConditionModel.from_pretrained(
            few_step_models / ".torch" / LCM_MODEL / "unet"
        ).eval(),
    }


def lcm_generation(**changes: Any) -> Generation:
    lcm = {"model": LCM_MODEL, "scheduler": "lcm", "steps": 4, "cfg": 8.5, "negative_prompt": None}
    return demo_generation(**{**lcm, **changes})


def diffusers_lcm(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' LatentConsistencyModelPipeline with our scheduler, starting noise and step generator."""
    scheduler = make_scheduler(gen.scheduler, LCM_SCHEDULER_CONFIG, seed=gen.seed)
    pipe = diffusers.LatentConsistencyModelPipeline(**parts, **NO_SAFETY_CHECKER, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        gen.prompt,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        num_images_per_prompt=gen.batch,
        generator=torch.Generator().manual_seed(gen.seed),
        output_type="np",
        **from_our_noise(gen),
    ).images
    return (images * 255).round().astype(np.int16)


@pytest.mark.parametrize(
    "changes",
    [{}, {"steps": 2, "batch": 2}, {"cfg": 1.0, "steps": 6}],
    ids=["4-steps", "2-steps-batch", "no-guidance-weight"],
)
def test_lcm_unet_matches_diffusers_latent_consistency_pipeline(
    lcm_model: DiffusionModel, lcm_parts: dict[str, Any], changes: dict[str, Any]
) -> None:
    gen = lcm_generation(**changes)
    reference = diffusers_lcm(lcm_parts, lcm_model, gen)
    ours = pixels(txt2img(lcm_run(Run(lcm_model, gen), "txt2img")))
    assert_matches(ours, reference, (gen.batch, gen.height, gen.width, 3))


def test_guidance_embedding_is_diffusers_and_the_unet_reads_it(
    lcm_model: DiffusionModel, lcm_parts: dict[str, Any]
) -> None:
    pipe = diffusers.LatentConsistencyModelPipeline(
        **lcm_parts, **NO_SAFETY_CHECKER, scheduler=make_scheduler("lcm", LCM_SCHEDULER_CONFIG)
    )
    for cfg, width in ((8.5, LCM_WIDTH), (1.5, 7)):
        expected = pipe.get_guidance_scale_embedding(torch.tensor([cfg - 1.0] * 2), embedding_dim=width)
        assert np.array_equal(guidance_embedding(cfg, width, 2), expected.numpy())
    # Another cfg is another image, with no negative prompt encoded at all.
    high, low = (
        pixels(txt2img(lcm_run(Run(lcm_model, lcm_generation(cfg=cfg)), "txt2img"))) for cfg in (8.5, 2.0)
    )
    assert np.abs(high - low).mean() > 0.25


class CountingSessions:
    """The model's sessions, the UNet's wrapped to record how many rows each call gets."""

    def __init__(self, model: DiffusionModel) -> None:
        self.model, self.rows, self.inputs = model, [], []

    def get(self, path: Path, *args: Any) -> Any:
        session = self.model.sessions.get(path, *args)
        return self.Counting(self, session) if path.parent.name == "unet" else session

    class Counting:
        def __init__(self, owner: CountingSessions, session: Any) -> None:
            self.owner, self.session = owner, session

        def get_inputs(self) -> Any:
            return self.session.get_inputs()

        def get_outputs(self) -> Any:
            return self.session.get_outputs()

        def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
            self.owner.rows.append(len(feeds["sample"]))
            self.owner.inputs.append(sorted(feeds))
            return self.session.run(outputs, feeds)


def counted(model: DiffusionModel) -> tuple[DiffusionModel, CountingSessions]:
    sessions = CountingSessions(model)
    return dataclasses.replace(model, sessions=sessions), sessions


def test_an_lcm_unet_runs_one_row_per_step_whatever_the_cfg(lcm_model: DiffusionModel) -> None:
    model, sessions = counted(lcm_model)
    run = lcm_run(Run(model, lcm_generation(cfg=8.0, negative_prompt="blurry")), "txt2img")
    assert isinstance(run, LcmRun) and run.generation.cfg == 1.0 and run.guidance_scale == 8.0
    txt2img(run)
    assert sessions.rows == [1] * 4
    assert all(TIMESTEP_COND in names for names in sessions.inputs)


def test_stages_feed_an_lcm_unet_and_refuse_pipelines_that_cannot(
    few_step_models: Path, sessions: SessionCache, lcm_model: DiffusionModel
) -> None:
    params = {**IMAGE, "model": LCM_MODEL, "scheduler": "lcm", "prompt": "a cat", "width": 64, "height": 64}
    ctx = StageContext(models_path=few_step_models, sessions=sessions)
    [result] = run_stage(source_txt2img.STAGE, ctx, params, [])
    [expected] = txt2img(lcm_run(Run(lcm_model, Generation.from_params(params)), "txt2img"))
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    assert result.metadata["params"]["cfg"] == 6.0
    img2img_params = {**RESOLVED, **params, "pipeline": "img2img", "strength": 0.5}
    [edited] = run_stage(blend_img2img.STAGE, ctx, img2img_params, [StageImage(gradient(64, 64), {})])
    assert edited.image.size == (64, 64)
    refusal = f"{LCM_MODEL} is an LCM-distilled model, which runs txt2img and img2img on Stable Diffusion"
    with pytest.raises(ValueError, match=re.escape(f"{refusal} 1.x/2.x only, not panorama")):
        run_stage(source_txt2img.STAGE, ctx, {**params, "pipeline": "panorama"}, [])
    with pytest.raises(ValueError, match=re.escape(f"{refusal} 1.x/2.x only, not pix2pix")):
        lcm_run(Run(lcm_model, lcm_generation()), "pix2pix")
    # A plain UNet is left as it is.
    assert not isinstance(
        lcm_run(Run(load_model(few_step_models, TURBO_MODEL, sessions), lcm_generation()), "txt2img"), LcmRun
    )
    assert lcm_width(few_step_models / LCM_MODEL) == LCM_WIDTH
    assert lcm_width(few_step_models / TURBO_MODEL) is None


def sessions_loop(model: DiffusionModel, generation: Generation) -> np.ndarray:
    """The image ``LcmRun.denoise`` makes on the model's sessions (the CPU route of ``txt2img``)."""
    run = lcm_run(Run(model, generation), "txt2img")
    embeddings = run.prompt_embeddings()
    scheduler = run.scheduler()
    return pixels(run.decode(run.denoise(scheduler, run.starting_latents(scheduler), embeddings)))


def test_the_batched_loop_embeds_each_jobs_guidance_scale_as_lcm_run_does(
    lcm_model: DiffusionModel,
) -> None:
    """The CUDA path's loop (``txt2img_batch``, here on the CPU denoiser) feeds an LCM-distilled UNet
    each job's own ``timestep_cond``, one row per image: jobs of different cfg share its calls."""
    model, sessions = counted(lcm_model)
    jobs = [lcm_generation(cfg=8.5, seed=1), lcm_generation(cfg=2.0, seed=2, batch=2)]
    outcomes = txt2img_batch(model, [Txt2ImgJob(job) for job in jobs], denoiser=CpuDenoiser(model))
    assert sessions.rows == [3] * 4  # 1 + 2 images, no guidance rows, one call per step
    assert all(TIMESTEP_COND in names for names in sessions.inputs)
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert outcome.error is None
        assert np.abs(pixels(outcome.images) - sessions_loop(lcm_model, job)).max() <= 1


def test_txt2img_takes_the_cuda_path_for_an_lcm_unet_with_its_guidance_scale(
    lcm_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CUDA worker an LCM run goes to the batched loop as the job asked for it (its cfg), and
    comes back with the image the sessions would make."""
    import pipelines.gpu.batch as gpu_batch
    import pipelines.gpu.runtime as runtime

    seen: list[Generation] = []
    batch = gpu_batch.txt2img_batch

    def on_cpu(model: DiffusionModel, jobs: Any, **_: Any) -> Any:
        seen.extend(job.generation for job in jobs)
        return batch(model, jobs, denoiser=CpuDenoiser(model))

    generation = lcm_generation(cfg=7.0, seed=4)
    expected = sessions_loop(lcm_model, generation)
    monkeypatch.setattr(runtime, "graph_model", lambda model, load=True: object())
    monkeypatch.setattr(gpu_batch, "txt2img_batch", on_cpu)
    images = txt2img(lcm_run(Run(lcm_model, generation), "txt2img"))
    assert [job.cfg for job in seen] == [7.0]
    assert np.abs(pixels(images) - expected).max() <= 1


def test_lcm_img2img_on_a_gpu_worker_feeds_the_graphs_its_guidance_embedding(
    lcm_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """img2img's UNet loop takes the CUDA-graph path with ``timestep_cond`` and one row per image."""
    from pipelines.diffusion.img2img import img2img
    from tests.unit.pipelines.graph_stand_in import route_to_cpu_stand_in

    generation = lcm_generation(cfg=7.0, seed=4, batch=2)
    on_sessions = pixels(img2img(lcm_run(Run(lcm_model, generation), "img2img"), gradient(), 0.75))
    graphs = route_to_cpu_stand_in(monkeypatch)
    on_graphs = pixels(img2img(lcm_run(Run(lcm_model, generation), "img2img"), gradient(), 0.75))
    assert graphs.rows == [2] * 3
    assert all(TIMESTEP_COND in names for made in graphs.made for names in made.inputs)
    assert np.abs(on_graphs - on_sessions).max() <= 1


# --- turbo and LCM-LoRA: ordinary UNets, trailing schedules, cfg 1 ------------------------------------


#: Schedulers that space their steps their own way whatever the config says: dpm-single always from
#: the top, lcm from its ``original_inference_steps``, ipndm on its own scale.
OWN_SPACING = {"dpm-single", "ipndm", "lcm"}


@pytest.mark.parametrize("name", sorted(set(SCHEDULER_CLASSES) - OWN_SPACING))
def test_schedulers_honour_trailing_spacing_from_the_model_config(name: str) -> None:
    trailing = make_scheduler(name, TURBO_SCHEDULER_CONFIG, seed=1)
    leading = make_scheduler(name, {**TURBO_SCHEDULER_CONFIG, "timestep_spacing": "leading"}, seed=1)
    for scheduler in (trailing, leading):
        scheduler.set_timesteps(4)
    # Trailing ends the schedule at the last training step; leading starts well below it.
    assert float(trailing.timesteps[0]) == pytest.approx(999, abs=1)
    assert float(leading.timesteps[0]) < 900


@pytest.mark.parametrize("name", sorted(set(SCHEDULER_CLASSES) - {"ipndm"}))
def test_a_one_step_run_of_a_turbo_model_starts_from_pure_noise(name: str) -> None:
    scheduler = make_scheduler(name, TURBO_SCHEDULER_CONFIG, seed=1)
    scheduler.set_timesteps(1)
    assert float(scheduler.timesteps[0]) == pytest.approx(999, abs=1)


def test_a_turbo_model_at_cfg_1_matches_diffusers_with_one_unet_row_per_step(
    few_step_models: Path, sessions: SessionCache, torch_parts: Callable[[str], dict[str, Any]]
) -> None:
    turbo = load_model(few_step_models, TURBO_MODEL, sessions)
    model, counting = counted(turbo)
    gen = demo_generation(model=TURBO_MODEL, scheduler="euler-a", steps=1, cfg=1.0)
    ours = pixels(txt2img(Run(model, gen)))
    assert counting.rows == [1]
    reference = run_diffusers(
        diffusers.StableDiffusionPipeline, torch_parts(DEMO_MODELS[0].name), turbo, gen, **from_our_noise(gen)
    )
    assert_matches(ours, reference, (1, gen.height, gen.width, 3))
    # cfg at or below 1 runs no guidance: the same single row, the same image.
    counting.rows.clear()
    assert np.array_equal(pixels(txt2img(Run(model, dataclasses.replace(gen, cfg=0.5)))), ours)
    assert counting.rows == [1]


def test_converted_unet_config_is_copied(few_step_models: Path) -> None:
    config = json.loads((few_step_models / LCM_MODEL / "unet" / "config.json").read_text())
    assert config["time_cond_proj_dim"] == LCM_WIDTH

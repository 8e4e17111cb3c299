"""``panorama-sdxl``: MultiDiffusion on the demo SDXL model.

diffusers has no SDXL panorama pipeline, so the reference is a plain MultiDiffusion loop written
here on diffusers' PyTorch SDXL parts (its UNet, its pipeline's prompt encoding, its VAE), every
view conditioned on the whole image's size: what differs beyond rounding is ours.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import DiffusionModel, Generation, initial_latents, load_model
from pipelines.diffusion.panorama import panorama, panorama_img2img, panorama_inpaint, panorama_latents
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
from pipelines.diffusion.sdxl import SdxlRun, txt2img_sdxl
from pipelines.models.demo import DEMO_SDXL
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img, source_txt2img, upscale_outpaint
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation
from tests.unit.pipelines.resolved import IMAGE, RESOLVED, run_stage

#: Three views of 16 latent cells, 8 apart, over a 256x128 image (32x16 latent cells).
WINDOW, STRIDE = 16, 8
WIDE: dict[str, Any] = {"width": 256, "height": 128}
VIEW_COLUMNS = (0, 8, 16)


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_SDXL, sessions)


def generation(**changes: Any) -> Generation:
    return demo_generation(model=DEMO_SDXL, **changes)


def reference_multidiffusion(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """MultiDiffusion on diffusers' SDXL UNet: three column views, each on its own scheduler copy."""
    from diffusers import StableDiffusionXLPipeline

    scheduler = make_scheduler(gen.scheduler, load_scheduler_config(model.folder), seed=gen.seed)
    pipe = StableDiffusionXLPipeline(**parts, scheduler=scheduler, add_watermarker=False)
    with torch.no_grad():
        text, negative, pooled, negative_pooled = pipe.encode_prompt(
            gen.prompt, negative_prompt=gen.negative_prompt, do_classifier_free_guidance=True
        )
        hidden, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        # original size, crop origin, target size: the whole image's, for every view
        time_ids = torch.tensor(
            [[gen.height, gen.width, 0, 0, gen.height, gen.width]] * 2, dtype=torch.float32
        )
        scheduler.set_timesteps(gen.steps)
        noise = initial_latents(gen.seed, gen.batch, gen.width, gen.height)
        latents = torch.from_numpy(noise) * scheduler.init_noise_sigma
        views = [copy.deepcopy(scheduler) for _ in VIEW_COLUMNS]
        generator = torch.Generator().manual_seed(gen.seed)
        for t in scheduler.timesteps:
            value, count = torch.zeros_like(latents), torch.zeros_like(latents)
            for left, view in zip(VIEW_COLUMNS, views, strict=True):
                window = latents[:, :, :, left : left + WINDOW]
                model_input = view.scale_model_input(torch.cat([window] * 2), t)
                out = pipe.unet(
                    model_input,
                    t,
                    encoder_hidden_states=hidden,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                ).sample
                uncond, cond = out.chunk(2)
                guided = uncond + gen.cfg * (cond - uncond)
                value[:, :, :, left : left + WINDOW] += view.step(
                    guided, t, window, generator=generator
                ).prev_sample
                count[:, :, :, left : left + WINDOW] += 1
            latents = value / count
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    levels = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (levels * 255).round().astype(np.int16)


@pytest.mark.parametrize("scheduler", ["euler", "euler-a", "dpm-multi"])
def test_wide_panorama_matches_a_multidiffusion_loop_on_diffusers_sdxl_unet(
    sdxl_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], scheduler: str
) -> None:
    gen = generation(scheduler=scheduler, **WIDE)
    reference = reference_multidiffusion(torch_parts(DEMO_SDXL), sdxl_model, gen)
    ours = pixels(panorama(SdxlRun(sdxl_model, gen), window=WINDOW, stride=STRIDE))
    assert_matches(ours, reference, (1, 128, 256, 3))
    # The views matter: SDXL txt2img of the same size and noise is another image.
    assert np.abs(ours - pixels(txt2img_sdxl(SdxlRun(sdxl_model, gen)))).mean() > 1


@pytest.mark.parametrize(
    "changes",
    [{"scheduler": "euler"}, {"scheduler": "euler-a", "batch": 2}, {"scheduler": "dpm-multi", "cfg": 1.0}],
    ids=["euler", "euler-a-batch", "dpm-multi-no-guidance"],
)
def test_one_view_over_the_whole_image_is_sdxl_txt2img(
    sdxl_model: DiffusionModel, changes: dict[str, Any]
) -> None:
    gen = generation(**changes)
    one_view = panorama(SdxlRun(sdxl_model, gen), window=64)
    plain = txt2img_sdxl(SdxlRun(sdxl_model, gen))
    assert [np.asarray(image).tolist() for image in one_view] == [
        np.asarray(image).tolist() for image in plain
    ]


def test_a_strong_region_replaces_the_prompt_in_its_rectangle_only(sdxl_model: DiffusionModel) -> None:
    def halves(prompt: str) -> tuple[np.ndarray, np.ndarray]:
        # Two views side by side that do not overlap: nothing flows between the halves.
        latents = panorama_latents(
            SdxlRun(sdxl_model, generation(prompt=prompt, **WIDE)), window=16, stride=16
        )
        return latents[..., :16], latents[..., 16:]

    base = generation().prompt
    left, right = halves(base)
    region_left, region_right = halves(f"{base} <region:0:128:128:256:100:0:a blue ocean at night>")
    assert np.array_equal(region_left, left)
    assert np.abs(region_right - right).mean() > 0.1


def test_stage_routes_panorama_sdxl(models_path: Path, sdxl_model: DiffusionModel) -> None:
    params = {
        **IMAGE,
        "model": DEMO_SDXL,
        "pipeline": "panorama-sdxl",
        "prompt": "a wide valley",
        "seed": 4,
        "steps": 3,
        "width": 512,
        "height": 256,
        # 32-cell views, 24 apart (unet_overlap 0.25): three over 512x256.
        "unet_tile": 256,
    }
    steps: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sdxl_model.sessions, on_step=steps.append)
    [result] = run_stage(source_txt2img.STAGE, ctx, params, [])
    assert result.image.size == (512, 256)
    assert result.metadata["params"]["pipeline"] == "panorama-sdxl"
    assert sum(steps) == 3
    [expected] = panorama(SdxlRun(sdxl_model, Generation.from_params(params)), window=32, stride=24)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    # panorama on an SDXL model is SDXL's panorama too; txt2img-sdxl is another image.
    ctx = StageContext(models_path=models_path, sessions=sdxl_model.sessions)
    [named] = run_stage(source_txt2img.STAGE, ctx, {**params, "pipeline": "panorama"}, [])
    assert np.array_equal(np.asarray(named.image), np.asarray(result.image))
    [plain] = run_stage(source_txt2img.STAGE, ctx, {**params, "pipeline": "txt2img-sdxl"}, [])
    assert not np.array_equal(np.asarray(plain.image), np.asarray(result.image))


def wide_stage_params(**changes: Any) -> dict[str, Any]:
    """A panorama-sdxl stage over a 256x128 image: 16-cell views, 12 apart (unet_overlap 0.25), three."""
    return {
        **RESOLVED,
        "model": DEMO_SDXL,
        "pipeline": "panorama-sdxl",
        "prompt": "a wide valley",
        "seed": 4,
        "unet_tile": 128,
        **changes,
    }


def test_img2img_stage_runs_sdxl_panorama_over_the_whole_image(
    models_path: Path, sdxl_model: DiffusionModel
) -> None:
    params = wide_stage_params(steps=4, strength=0.5)
    source = StageImage(gradient(256, 128), {})
    steps: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sdxl_model.sessions, on_step=steps.append)
    [result] = run_stage(blend_img2img.STAGE, ctx, params, [source])
    assert result.image.size == (256, 128)
    assert result.metadata["params"]["pipeline"] == "panorama-sdxl"
    assert sum(steps) == 2 == blend_img2img.STAGE.estimate(params)
    gen = Generation.from_params(params, width=256, height=128)
    [expected] = panorama_img2img(SdxlRun(sdxl_model, gen), source.image, 0.5, window=16, stride=12)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    # The views matter: SDXL img2img of the same source, strength and noise is another image.
    [plain] = img2img(SdxlRun(sdxl_model, gen), source.image, 0.5)
    assert np.abs(pixels([result.image]) - pixels([plain])).mean() > 1


def test_inpaint_stage_paints_an_sdxl_panorama_window_by_window(
    models_path: Path, sdxl_model: DiffusionModel
) -> None:
    params = wide_stage_params(steps=3, fill_color="white", stage_name="inpaint")
    source = gradient(256, 128)
    mask = Image.new("L", (256, 128), 0)
    ImageDraw.Draw(mask).rectangle((96, 0, 255, 127), fill=255)
    steps: list[int] = []
    ctx = StageContext(
        models_path=models_path,
        sessions=sdxl_model.sessions,
        inputs={"mask:inpaint": mask},
        on_step=steps.append,
    )
    [result] = run_stage(upscale_outpaint.STAGE, ctx, params, [StageImage(source, {})])
    assert result.image.size == (256, 128)
    assert result.metadata["params"]["pipeline"] == "panorama-sdxl"
    assert sum(steps) == 3
    gen = Generation.from_params(params, width=256, height=128)
    [painted] = panorama_inpaint(SdxlRun(sdxl_model, gen), source, mask, window=16, stride=12)
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.composite(painted, source, mask)))
    # The windows matter: SDXL inpainting of the same canvas in one UNet pass is another image.
    [plain] = inpaint(SdxlRun(sdxl_model, gen), source, mask)
    assert np.abs(pixels([painted]) - pixels([plain])).mean() > 1

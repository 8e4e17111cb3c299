"""The ``panorama`` pipeline on the demo model: MultiDiffusion against diffusers, regions, reseeds, img2img.

The demo UNet is tiny, so the views are made small (16 latent cells, stride 8) to get several
overlapping windows on a small image; diffusers' ``StableDiffusionPanoramaPipeline`` runs with
the same views on the very same weights, our scheduler and our starting noise.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.context import StageImage
from pipelines.diffusion.img2img import img2img, noised_source, strength_steps
from pipelines.diffusion.inpaint import inpaint, inpaint_inputs
from pipelines.diffusion.model import (
    LATENT_FACTOR,
    Callbacks,
    DiffusionModel,
    Generation,
    Run,
    encode_image,
    image_to_array,
    initial_latents,
    reseed_latents,
)
from pipelines.diffusion.panorama import (
    Rectangle,
    Region,
    View,
    accumulate,
    base_views,
    multidiffusion,
    panorama,
    panorama_img2img,
    panorama_inpaint,
    panorama_latents,
    region_tokens,
    unet_window,
    view_options,
    view_windows,
)
from pipelines.diffusion.prompt import Reseed, parse_prompt
from pipelines.diffusion.txt2img import txt2img
from pipelines.models.demo import DEMO_MODELS
from pipelines.stages import blend_img2img, source_txt2img, upscale_outpaint
from tests.unit.pipelines.contexts import stage_context
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, from_our_noise, run_diffusers
from tests.unit.pipelines.resolved import IMAGE, RESOLVED, run_stage

#: Views of 16 latent cells (128 px) every 8 cells: a 256x128 image has three, overlapping by half.
WINDOW, STRIDE = 16, 8
WIDE: dict[str, Any] = {"width": 256, "height": 128}
WIDE_PROMPT = demo_generation().prompt


def our_panorama(model: DiffusionModel, gen: Generation, **options: Any) -> np.ndarray:
    return pixels(panorama(Run(model, gen), window=WINDOW, stride=STRIDE, **options))


def diffusers_panorama(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' panorama pipeline with our views, noise and scheduler, ``circular_padding`` off."""
    from diffusers import StableDiffusionPanoramaPipeline

    base_views: Any = StableDiffusionPanoramaPipeline.get_views

    class SmallViews(StableDiffusionPanoramaPipeline):
        def get_views(self, *args: Any, **kwargs: Any) -> Any:
            return base_views(self, *args, **{**kwargs, "window_size": WINDOW, "stride": STRIDE})

    return run_diffusers(SmallViews, parts, model, gen, **from_our_noise(gen))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"scheduler": "ddim"}, id="ddim"),
        # Step noise: one generator, drawn view after view.
        pytest.param({"scheduler": "euler-a"}, id="euler-a"),
        # Multistep schedulers: every view keeps its own history of model outputs.
        pytest.param({"scheduler": "dpm-multi"}, id="dpm-multi"),
        pytest.param({"scheduler": "pndm"}, id="pndm"),
        pytest.param({"cfg": 1.0}, id="no-guidance"),
    ],
)
def test_panorama_matches_diffusers_panorama_pipeline(
    demo_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], changes: dict[str, Any]
) -> None:
    gen = demo_generation(**changes, **WIDE)
    assert len(view_windows(gen.height // 8, gen.width // 8, WINDOW, STRIDE)) == 3
    reference = diffusers_panorama(torch_parts(DEMO_MODELS[0].name), demo_model, gen)
    ours = our_panorama(demo_model, gen)
    assert_matches(ours, reference, (1, 128, 256, 3))
    # The windows matter: a plain txt2img of the same size and noise is another image.
    assert np.abs(ours - pixels(txt2img(Run(demo_model, gen)))).mean() > 1


def test_views_cover_the_latents_as_diffusers_lays_them_out() -> None:
    assert view_windows(16, 32, 16, 8) == [(slice(0, 16), slice(left, left + 16)) for left in (0, 8, 16)]
    # Smaller than the window: one view of the whole latents.
    assert view_windows(6, 8, 64, 8) == [(slice(0, 6), slice(0, 8))]
    # A stride that misses the far edge gets a last window flush with it.
    assert view_windows(8, 20, 8, 8) == [
        (slice(0, 8), slice(0, 8)),
        (slice(0, 8), slice(8, 16)),
        (slice(0, 8), slice(12, 20)),
    ]


def test_region_windows_grow_to_whole_unet_cells_inside_the_latents() -> None:
    assert unet_window(slice(1, 5), 16) == slice(1, 9)
    assert unet_window(slice(25, 32), 32) == slice(24, 32)
    assert unet_window(slice(0, 16), 16) == slice(0, 16)


def test_region_and_reseed_tokens_are_read_and_left_out_of_the_encoded_text() -> None:
    prompt = "a castle <region:0:64:128:192:4.5:0.25_TB:a red dragon+> at dusk <reseed:8:16:64:80:-1>"
    regions, reseeds = region_tokens(prompt)
    assert parse_prompt(prompt).text == "a castle  at dusk "
    assert regions == [Region(Rectangle(0, 64, 128, 192), 4.5, 0.25, "TB", "a red dragon", True)]
    assert regions[0].text("a castle at dusk") == "a red dragon a castle at dusk"
    assert reseeds == [Reseed(8, 16, 64, 80, -1)]
    [plain] = region_tokens("<region:0:0:64:64:2:0:a cat>")[0]
    assert (plain.edges, plain.append_base, plain.text("base")) == ("TLBR", False, "a cat")


def test_feather_ramps_only_the_chosen_edges() -> None:
    region = Region(Rectangle(0, 0, 64, 64), 2.0, 0.5, "L", "x", False)
    mask = region.mask()
    assert mask.shape == (8, 8)
    # Half the width (4 cells) ramps up from the left edge, cell centres at 1/8, 3/8, ...
    assert np.allclose(mask, [[0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1]] * 8)
    assert np.allclose(Region(Rectangle(0, 0, 64, 64), 2.0, 0.0, "TLBR", "x", False).mask(), 1)


def halves(model: DiffusionModel, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """The final latents' left and right halves, from two views side by side that do not overlap.

    Without overlap nothing flows between the halves, so a change confined to one half stays
    there exactly (the decoder's attention would spread it over the image's pixels).
    """
    latents = panorama_latents(Run(model, demo_generation(prompt=prompt, **WIDE)), window=16, stride=16)
    return latents[..., :16], latents[..., 16:]


def test_a_strong_region_replaces_the_prompt_in_its_rectangle_only(demo_model: DiffusionModel) -> None:
    ocean = "a blue ocean with a golden moon at night"
    left, right = halves(demo_model, WIDE_PROMPT)
    region_left, region_right = halves(demo_model, f"{WIDE_PROMPT} <region:0:128:128:256:100:0:{ocean}>")
    _, ocean_right = halves(demo_model, ocean)
    assert np.array_equal(region_left, left)
    assert np.abs(region_right - right).mean() > 0.1
    # Strength 100 replaces the base prompt: the rectangle is the ocean prompt's image there,
    # but for the last step, which regions skip.
    assert np.abs(region_right - ocean_right).mean() < 0.01
    # A weak region blends in: part of the way from the base prompt to the region's.
    _, weak_right = halves(demo_model, f"{WIDE_PROMPT} <region:0:128:128:256:0.5:0:{ocean}>")
    assert 0.1 < np.abs(weak_right - right).mean() / np.abs(ocean_right - right).mean() < 0.9


def test_a_region_under_strength_100_blends_with_the_base_views_by_its_strength() -> None:
    """onnx-web replaces the base prompt only from strength 100; below, a region counts as
    ``strength`` views: at 20, a cell the base views make 0 and the region 1 ends at 20/21."""
    shape = (1, 4, 8, 8)

    def blended(strength: float) -> np.ndarray:
        value, count = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        region = Region(Rectangle(0, 0, 64, 64), strength, 0.0, "TLBR", "a ship", False)
        accumulate(value, count, View(slice(0, 8), slice(0, 8), None), np.zeros(shape, np.float32))
        accumulate(value, count, View(slice(0, 8), slice(0, 8), None, region), np.ones(shape, np.float32))
        result: np.ndarray = value / count
        return result

    assert np.allclose(blended(20.0), 20 / 21)
    assert np.allclose(blended(100.0), 1.0)


def test_a_region_outside_the_image_is_refused(demo_model: DiffusionModel) -> None:
    gen = demo_generation(prompt="a cat <region:0:0:64:320:2:0:a dog>", **WIDE)
    with pytest.raises(ValueError, match="outside the 256x128 image"):
        panorama(Run(demo_model, gen))
    with pytest.raises(ValueError, match="multiples of 8"):
        panorama(Run(demo_model, demo_generation(prompt="a cat <reseed:0:0:60:64:3>", **WIDE)))


def test_reseed_changes_the_starting_noise_only_inside_its_rectangle() -> None:
    noise = initial_latents(5, 1, 256, 128)
    reseeded = reseed_latents(noise, [Reseed(32, 64, 96, 160, 77)], seed=5)
    inside = (slice(None), slice(None), slice(4, 12), slice(8, 20))
    assert np.array_equal(reseeded[inside], initial_latents(77, 1, 96, 64))
    outside = np.ones(noise.shape, bool)
    outside[inside] = False
    assert np.array_equal(reseeded[outside], noise[outside])
    # -1 takes its seed from the image seed: random-looking, yet the same request gives the same noise.
    random = reseed_latents(noise, [Reseed(32, 64, 96, 160, -1)], seed=5)
    assert np.array_equal(random, reseed_latents(noise, [Reseed(32, 64, 96, 160, -1)], seed=5))
    assert not np.array_equal(random[inside], noise[inside])


def test_a_random_reseed_draws_its_seed_as_onnx_web_does() -> None:
    """onnx-web draws ``RandomState(seed).random_integers(2**32 - 1)`` for each ``-1`` token, in
    token order, and nothing for a token with its own seed: 953453412, then 236996815, for seed 5."""
    noise = initial_latents(5, 1, 256, 128)
    reseeds = [Reseed(0, 0, 64, 64, -1), Reseed(0, 64, 64, 128, 3), Reseed(64, 0, 128, 64, -1)]
    reseeded = reseed_latents(noise, reseeds, seed=5)
    assert np.array_equal(reseeded[:, :, 0:8, 0:8], initial_latents(953453412, 1, 64, 64))
    assert np.array_equal(reseeded[:, :, 0:8, 8:16], initial_latents(3, 1, 64, 64))
    assert np.array_equal(reseeded[:, :, 8:16, 0:8], initial_latents(236996815, 1, 64, 64))
    legacy = np.random.RandomState(5)
    if hasattr(legacy, "random_integers"):  # deprecated by numpy; while it lasts, it draws those seeds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert [int(legacy.random_integers(2**32 - 1)) for _ in range(2)] == [953453412, 236996815]


def test_reseed_token_changes_the_image_from_its_rectangle(demo_model: DiffusionModel) -> None:
    left, right = halves(demo_model, WIDE_PROMPT)
    reseeded_left, reseeded_right = halves(demo_model, f"{WIDE_PROMPT} <reseed:0:128:128:256:9>")
    assert np.array_equal(reseeded_left, left)
    assert np.abs(reseeded_right - right).mean() > 1


@pytest.mark.parametrize("scheduler", ["ddim", "heun"])
def test_progress_reports_one_step_per_scheduler_step(demo_model: DiffusionModel, scheduler: str) -> None:
    steps: list[int] = []
    checks: list[None] = []
    hooks = Callbacks(on_step=steps.append, check_cancelled=lambda: checks.append(None))
    gen = demo_generation(
        scheduler=scheduler,
        steps=4,
        # A region off the UNet's 64-px grid: the UNet runs on the whole cells around it.
        prompt=f"{WIDE_PROMPT} <region:8:200:40:256:2:0.25:a dog>",
        **WIDE,
    )
    panorama(Run(demo_model, gen, hooks), window=WINDOW, stride=STRIDE)
    assert sum(steps) == 4
    # Every UNet call checks for cancellation: three views and a region (not on the last call).
    calls = len(Run(demo_model, gen).scheduler().timesteps)
    assert len(checks) == calls * 4 - 1


def test_stage_routes_the_panorama_pipeline(models_path: Path, demo_model: DiffusionModel) -> None:
    params = {
        **IMAGE,
        "model": DEMO_MODELS[0].name,
        "pipeline": "panorama",
        "prompt": "a cat <region:0:0:64:64:4:0:a dog>",
        "seed": 3,
        "steps": 3,
        # A 256-px tile makes 32-cell views, 24 apart at the default unet_overlap of 0.25: three
        # over 512x256, which the small UNet and a full-size txt2img run in little memory.
        "width": 512,
        "height": 256,
        "unet_tile": 256,
    }
    steps: list[int] = []
    [result] = run_stage(
        source_txt2img.STAGE, stage_context(steps=steps, models_path=models_path), params, []
    )
    assert result.image.size == (512, 256)
    assert result.metadata["params"]["pipeline"] == "panorama"
    assert sum(steps) == 3
    gen = Generation.from_params(params)
    expected = panorama(Run(demo_model, gen), window=32, stride=24)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected[0]))
    [plain] = run_stage(
        source_txt2img.STAGE, stage_context(models_path=models_path), {**params, "pipeline": "txt2img"}, []
    )
    assert not np.array_equal(np.asarray(plain.image), np.asarray(result.image))


def panorama_peak(pipeline: str, width: int, height: int, prompt: str = "a coast") -> dict[str, int]:
    from pipelines.memory import chain_memory

    params = {
        **IMAGE,
        "pipeline": pipeline,
        "width": width,
        "height": height,
        "unet_tile": 512,
        "prompt": prompt,
    }
    stage = {"name": "source", "type": "source-txt2img", "params": params, "tiles": max(width, height)}
    memory = chain_memory([stage], (0, 0), model_bytes=lambda name: 2 * 1024**3, family=lambda name: "sd")
    return memory.to_dict()


@pytest.mark.parametrize(
    ("tile", "overlap", "views"),
    [
        (512, 0.25, (64, 48)),  # onnx-web's defaults
        (512, 0.75, (64, 16)),  # what its docs suggest for panoramas
        (512, 0.0, (64, 64)),  # windows side by side
        (512, 0.9, (64, 6)),
        (128, 0.5, (16, 8)),
        (200, 0.25, (24, 18)),  # off the UNet's 64-px grid: the whole cells it holds
        (8, 0.9, (8, 1)),  # never under one UNet cell, nor a stride under one latent cell
    ],
)
def test_views_are_the_unet_tile_its_overlap_apart_as_onnx_web_sets_them(
    tile: int, overlap: float, views: tuple[int, int]
) -> None:
    assert view_options({"unet_tile": tile, "unet_overlap": overlap}) == views


def test_the_stage_windows_follow_unet_overlap(models_path: Path) -> None:
    params = {**IMAGE, "model": DEMO_MODELS[0].name, "pipeline": "panorama", "seed": 3, "steps": 2, **WIDE}
    checks: dict[float, int] = {}
    for overlap in (0.0, 0.5, 0.75):
        ctx = stage_context(models_path=models_path)
        counted: list[None] = []
        ctx = dataclasses.replace(ctx, check_cancelled=lambda counted=counted: counted.append(None))
        run_stage(source_txt2img.STAGE, ctx, {**params, "unet_tile": 128, "unet_overlap": overlap}, [])
        checks[overlap] = len(counted)
    # 16-cell windows over 32 columns: 2 side by side, 3 (8 apart), 5 (4 apart); a check per view call.
    calls = checks[0.0] // 2
    assert calls > 0
    assert checks == {0.0: 2 * calls, 0.5: 3 * calls, 0.75: 5 * calls}


def test_panorama_is_admitted_by_its_window_not_its_whole_size() -> None:
    # The UNet sees one 512-px window at a time, so a 2048x1024 panorama fits a 24 GiB CPU worker
    # (its VAE's attention over the whole image is most of it), where a txt2img of that size, whose
    # UNet attends over all 32,768 latent cells at once, needs several times that.
    wide = panorama_peak("panorama", 2048, 1024)
    assert wide["cpu"] < 24 * 1024**3 < 100 * 1024**3 < panorama_peak("txt2img", 2048, 1024)["cpu"]
    # It still needs more than one window's txt2img: its VAE decodes the whole image.
    assert wide["cpu"] > panorama_peak("txt2img", 512, 512)["cpu"]
    # An image no larger than the window is one view: estimated as the txt2img it is.
    assert panorama_peak("panorama", 512, 512) == panorama_peak("txt2img", 512, 512)


def test_a_region_wider_than_the_window_raises_the_panorama_estimate() -> None:
    plain = panorama_peak("panorama", 2048, 1024)
    # A region's view is its rectangle grown to whole UNet cells: 1024x1000 px here.
    region = panorama_peak("panorama", 2048, 1024, "a coast <region:0:0:1000:1024:2:0:a ship>")
    assert region["cpu"] > plain["cpu"]
    assert region == panorama_peak("panorama", 2048, 1024, "a coast <region:0:0:1024:1024:2:0:a ship>")


# --- panorama img2img ------------------------------------------------------------------------------


def wide_source() -> Image.Image:
    """A 256x128 gradient: three 16-cell windows wide, so the windows matter."""
    return gradient(256, 128)


@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 0.5), ("euler-a", 0.7), ("heun", 0.5)])
def test_img2img_windows_start_from_the_noised_source(
    demo_model: DiffusionModel, scheduler: str, strength: float
) -> None:
    gen = demo_generation(scheduler=scheduler, steps=6, **WIDE)
    ours = pixels(
        panorama_img2img(Run(demo_model, gen), wide_source(), strength, window=WINDOW, stride=STRIDE)
    )
    assert ours.shape == (1, 128, 256, 3)
    plain = pixels(img2img(Run(demo_model, gen), wide_source(), strength))
    # The windows matter: plain img2img of the same source, strength and noise is another image.
    assert np.abs(ours - plain).mean() > 1
    # One view over the whole latents is the very loop img2img runs: same start, same schedule tail.
    run = Run(demo_model, gen)
    scheduler_state = run.scheduler()
    latents, timesteps, steps = noised_source(run, scheduler_state, wide_source(), strength)
    one_view = base_views(run, latents.shape, window=32, stride=STRIDE)
    assert len(one_view) == 1
    looped = multidiffusion(run, scheduler_state, latents, one_view, timesteps=timesteps, steps=steps)
    assert np.abs(pixels(run.decode(looped)) - plain).max() <= 1


@dataclass(frozen=True)
class LatentsRun(Run):
    """A run that hands back its final latents undecoded: the demo VAE is random, its pixels say little."""

    def decode(self, latents: np.ndarray) -> Any:
        return latents


def test_img2img_at_strength_0_keeps_the_source_as_plain_img2img_does(demo_model: DiffusionModel) -> None:
    gen = demo_generation(scheduler="ddim", steps=6, **WIDE)
    source = encode_image(demo_model, image_to_array(wide_source()))

    def moved(generate: Any, strength: float, **options: Any) -> float:
        latents = generate(LatentsRun(demo_model, gen), wide_source(), strength, **options)
        return float(np.abs(latents - source).mean())

    kept = moved(panorama_img2img, 0.0, window=WINDOW, stride=STRIDE)
    # One step at the schedule's last timestep, as plain img2img runs at strength 0 ...
    assert kept == pytest.approx(moved(img2img, 0.0), rel=0.1)
    # ... so the source's latents barely move, where half the schedule moves them far.
    assert kept * 10 < moved(panorama_img2img, 0.5, window=WINDOW, stride=STRIDE)


@pytest.mark.parametrize(
    ("scheduler", "strength", "expected"), [("ddim", 0.5, 3), ("heun", 0.7, 4), ("pndm", 0.0, 1)]
)
def test_img2img_progress_counts_the_strengths_scheduler_steps(
    demo_model: DiffusionModel, scheduler: str, strength: float, expected: int
) -> None:
    steps: list[int] = []
    checks: list[None] = []
    hooks = Callbacks(on_step=steps.append, check_cancelled=lambda: checks.append(None))
    gen = demo_generation(scheduler=scheduler, steps=6, **WIDE)
    panorama_img2img(Run(demo_model, gen, hooks), wide_source(), strength, window=WINDOW, stride=STRIDE)
    assert sum(steps) == expected == strength_steps(6, strength)
    # Every UNet call of the schedule's tail checks for cancellation, once per view (three).
    run = Run(demo_model, gen)
    _, timesteps, _ = noised_source(run, run.scheduler(), wide_source(), strength)
    assert len(checks) == len(timesteps) * 3


def test_img2img_stage_runs_panorama_over_the_whole_image(
    models_path: Path, demo_model: DiffusionModel
) -> None:
    params = {
        **RESOLVED,
        "model": DEMO_MODELS[0].name,
        "pipeline": "panorama",
        "prompt": "a wide valley",
        "seed": 3,
        "steps": 4,
        "strength": 0.5,
        # A 128-px tile makes 16-cell views, 12 apart (unet_overlap 0.25): three over the 256x128 source.
        "unet_tile": 128,
    }
    steps: list[int] = []
    ctx = stage_context(steps=steps, models_path=models_path)
    [result] = run_stage(blend_img2img.STAGE, ctx, params, [StageImage(wide_source(), {})])
    assert result.image.size == (256, 128)
    assert result.metadata["params"]["pipeline"] == "panorama"
    assert sum(steps) == 2 == blend_img2img.STAGE.estimate(params)
    gen = Generation.from_params(params, width=256, height=128)
    [expected] = panorama_img2img(Run(demo_model, gen), wide_source(), 0.5, window=16, stride=12)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    [plain] = run_stage(
        blend_img2img.STAGE,
        stage_context(models_path=models_path),
        {**params, "pipeline": "img2img"},
        [StageImage(wide_source(), {})],
    )
    assert not np.array_equal(np.asarray(plain.image), np.asarray(result.image))


# --- panorama inpaint and outpaint -----------------------------------------------------------------

BASE_MODEL, INPAINT_MODEL = (model.name for model in DEMO_MODELS)


def wide_mask() -> Image.Image:
    """White (repaint) across the seams of the three 16-cell windows, and a strip at the right edge
    as an outpainted border would be; the rest (black) is kept."""
    mask = Image.new("L", (256, 128), 0)
    ImageDraw.Draw(mask).rectangle((40, 24, 199, 103), fill=255)
    ImageDraw.Draw(mask).rectangle((224, 0, 255, 127), fill=255)
    return mask


def kept_cells() -> np.ndarray:
    """The latent cells the mask keeps, as the pipelines down-sample it (every eighth pixel)."""
    return np.asarray(wide_mask())[::LATENT_FACTOR, ::LATENT_FACTOR] < 128


@pytest.mark.parametrize("which", ["four-channel", "nine-channel"])
def test_inpaint_with_one_view_is_plain_inpainting(
    demo_model: DiffusionModel, inpaint_model: DiffusionModel, which: str
) -> None:
    model, name = (demo_model, BASE_MODEL) if which == "four-channel" else (inpaint_model, INPAINT_MODEL)
    gen = demo_generation(model=name, scheduler="euler-a", steps=4, **WIDE)
    # A 32-cell window covers the whole 256x128 canvas.
    ours = panorama_inpaint(LatentsRun(model, gen), wide_source(), wide_mask(), window=32, stride=STRIDE)
    assert np.array_equal(ours, inpaint(LatentsRun(model, gen), wide_source(), wide_mask()))


def test_four_channel_inpaint_windows_keep_the_unmasked_latents(demo_model: DiffusionModel) -> None:
    gen = demo_generation(model=BASE_MODEL, scheduler="euler-a", steps=4, **WIDE)
    ours = panorama_inpaint(
        LatentsRun(demo_model, gen), wide_source(), wide_mask(), window=WINDOW, stride=STRIDE
    )
    plain = inpaint(LatentsRun(demo_model, gen), wide_source(), wide_mask())
    source = encode_image(demo_model, image_to_array(wide_source()))
    kept = kept_cells()
    # After the last step the kept region is the source's own latents again, window seams and all ...
    assert np.allclose(ours[:, :, kept], source[:, :, kept], atol=1e-6)
    # ... and the windows painted the masked region, differently from one UNet pass over the whole.
    repainted = ~kept
    assert np.abs(ours[:, :, repainted] - source[:, :, repainted]).mean() > 0.1
    assert np.abs(ours[:, :, repainted] - plain[:, :, repainted]).mean() > 0.01


def test_nine_channel_inpaint_gives_each_window_its_part_of_the_mask(inpaint_model: DiffusionModel) -> None:
    # Windows side by side (stride = window) do not blend: each is exactly an inpainting run over
    # its own part of the noise, the mask and the masked image's latents.
    gen = demo_generation(model=INPAINT_MODEL, scheduler="ddim", steps=3, **WIDE)
    ours = panorama_inpaint(LatentsRun(inpaint_model, gen), wide_source(), wide_mask(), window=16, stride=16)
    run = LatentsRun(inpaint_model, gen)
    scheduler = run.scheduler()
    noise = initial_latents(gen.seed, gen.batch, 256, 128)
    conditioning, after_step = inpaint_inputs(run, scheduler, wide_source(), wide_mask(), noise)
    assert conditioning is not None and after_step is None
    embeddings = run.prompt_embeddings()
    for columns in (slice(0, 16), slice(16, 32)):
        alone = run.denoise(
            run.scheduler(),
            noise[:, :, :, columns] * float(scheduler.init_noise_sigma),
            embeddings,
            conditioning=np.ascontiguousarray(conditioning[:, :, :, columns]),
        )
        assert np.allclose(ours[:, :, :, columns], alone, atol=1e-4)
    # The two halves' masks differ, so a shared (unsliced) mask would have failed above.
    assert not np.array_equal(conditioning[:, :1, :, :16], conditioning[:, :1, :, 16:])


def test_inpaint_progress_counts_steps_and_checks_every_window(inpaint_model: DiffusionModel) -> None:
    steps: list[int] = []
    checks: list[None] = []
    hooks = Callbacks(on_step=steps.append, check_cancelled=lambda: checks.append(None))
    gen = demo_generation(model=INPAINT_MODEL, scheduler="ddim", steps=5, **WIDE)
    panorama_inpaint(Run(inpaint_model, gen, hooks), wide_source(), wide_mask(), window=WINDOW, stride=STRIDE)
    assert sum(steps) == 5
    assert len(checks) == 5 * 3


def test_inpaint_stage_paints_a_panorama_window_by_window(
    models_path: Path, inpaint_model: DiffusionModel
) -> None:
    params = {
        **RESOLVED,
        "model": INPAINT_MODEL,
        "pipeline": "panorama",
        "prompt": "a wide valley",
        "seed": 3,
        "steps": 3,
        "fill_color": "white",
        "stage_name": "inpaint",
        # A 128-px tile makes 16-cell views, 12 apart (unet_overlap 0.25): three over the 256x128 canvas.
        "unet_tile": 128,
    }
    steps: list[int] = []
    ctx = stage_context({"mask:inpaint": wide_mask()}, steps, models_path=models_path)
    [result] = run_stage(upscale_outpaint.STAGE, ctx, params, [StageImage(wide_source(), {})])
    assert result.image.size == (256, 128)
    assert result.metadata["params"]["pipeline"] == "panorama"
    assert sum(steps) == 3 == upscale_outpaint.STAGE.estimate(params)
    gen = Generation.from_params(params, width=256, height=128)
    [painted] = panorama_inpaint(Run(inpaint_model, gen), wide_source(), wide_mask(), window=16, stride=12)
    # What the mask keeps is the source's own pixels; the rest is the windows' painting.
    expected = Image.composite(painted, wide_source(), wide_mask())
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    [plain] = run_stage(
        upscale_outpaint.STAGE,
        stage_context({"mask:inpaint": wide_mask()}, models_path=models_path),
        {**params, "pipeline": "inpaint"},
        [StageImage(wide_source(), {})],
    )
    assert not np.array_equal(np.asarray(plain.image), np.asarray(result.image))

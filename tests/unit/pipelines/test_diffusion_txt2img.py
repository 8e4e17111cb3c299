"""The ``source-txt2img`` stage and txt2img behaviour on the demo model: schedulers, seeds, batches,
long prompts, progress and cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageCancelled, StageContext, StageImage
from pipelines.diffusion.model import DiffusionModel, Generation, Run, initial_latents
from pipelines.diffusion.schedulers import SCHEDULER_NAMES
from pipelines.diffusion.txt2img import txt2img
from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import SessionCache
from pipelines.stages import source_txt2img
from tests.unit.pipelines.resolved import IMAGE, run_stage

DEMO_MODEL = DEMO_MODELS[0].name


def stage_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **IMAGE,  # source-txt2img reads the image group only, as the txt2img route stores it
        "model": DEMO_MODEL,
        "pipeline": "txt2img",
        "scheduler": "ddim",
        "prompt": "a photo of a cat",
        "negative_prompt": None,
        "seed": 42,
        "steps": 4,
        "cfg": 6.0,
        "eta": 0.0,
        "batch": 1,
        "width": 64,
        "height": 48,
    }
    return {**params, **changes}


class Recorder:
    """A stage context whose callbacks count steps and can cancel after a given number of checks."""

    def __init__(self, models_path: Path, sessions: SessionCache, cancel_after: int | None = None) -> None:
        self.steps = 0
        self.checks = 0
        self.cancel_after = cancel_after
        self.ctx = StageContext(
            models_path=models_path, sessions=sessions, on_step=self.on_step, check_cancelled=self.check
        )

    def on_step(self, n: int = 1) -> None:
        self.steps += n

    def check(self) -> None:
        self.checks += 1
        if self.cancel_after is not None and self.checks >= self.cancel_after:
            raise StageCancelled()


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def generate(demo_model: DiffusionModel, **changes: Any) -> list[Image.Image]:
    params = stage_params(**changes)
    return txt2img(Run(demo_model, Generation.from_params(params)))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_gives_an_image_and_reports_one_step_per_scheduler_step(
    models_path: Path, sessions: SessionCache, scheduler: str
) -> None:
    # heun, k-dpm-2, k-dpm-2-a and dpm-sde call the UNet about twice per step, pndm once more
    # than the steps: progress counts scheduler steps, as onnx-web does, so the total is `steps`.
    recorder = Recorder(models_path, sessions)
    params = stage_params(scheduler=scheduler, steps=3)
    [result] = run_stage(source_txt2img.STAGE, recorder.ctx, params, [])
    pixels = array(result.image)
    assert result.image.size == (64, 48)
    assert result.image.mode == "RGB"
    # A NaN anywhere in the loop decodes to a flat black image.
    assert pixels.std() > 5
    assert recorder.steps == 3 == source_txt2img.STAGE.estimate(params)
    assert recorder.checks >= 3


def test_same_seed_gives_the_same_pixels_and_another_seed_other_pixels(demo_model: DiffusionModel) -> None:
    first = array(generate(demo_model, scheduler="euler-a", seed=7)[0])
    again = array(generate(demo_model, scheduler="euler-a", seed=7)[0])
    other = array(generate(demo_model, scheduler="euler-a", seed=8)[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 5


def test_batch_gives_distinct_images_the_first_from_the_same_noise_as_batch_one(
    demo_model: DiffusionModel,
) -> None:
    single = generate(demo_model, seed=3)
    batch = generate(demo_model, seed=3, batch=2)
    assert len(batch) == 2
    # The batch's noise is one (2, 4, h, w) draw: its first item is batch 1's noise, the second new.
    assert np.abs(array(batch[0]) - array(single[0])).max() <= 2
    assert np.abs(array(batch[0]) - array(batch[1])).mean() > 5


def test_long_prompt_uses_every_token(demo_model: DiffusionModel) -> None:
    words = ["cat"] * 60 + ["dog"] * 40
    long_images = generate(demo_model, prompt=" ".join(words))
    # Truncation to one window (what diffusers does) keeps the first 75 tokens.
    truncated = generate(demo_model, prompt=" ".join(words[:75]))
    assert long_images[0].size == (64, 48)
    assert np.abs(array(long_images[0]) - array(truncated[0])).mean() > 1


def test_long_negative_prompt_is_padded_to_the_prompt_windows(demo_model: DiffusionModel) -> None:
    images = generate(demo_model, prompt="a cat", negative_prompt=" ".join(["blurry"] * 90))
    without = generate(demo_model, prompt="a cat", negative_prompt="blurry")
    assert np.abs(array(images[0]) - array(without[0])).mean() > 1


def test_alternatives_take_turns_one_unet_call_each(demo_model: DiffusionModel) -> None:
    def image(prompt: str, steps: int) -> np.ndarray:
        return array(generate(demo_model, prompt=prompt, steps=steps, scheduler="ddim")[0])

    # DDIM calls the UNet once a step: one step draws only the first alternative.
    assert np.array_equal(image("a (cat|dog) in a field", 1), image("a cat in a field", 1))
    cycled = image("a (cat|dog) in a field", 3)
    # Later calls take the second (the same seed gives the same pixels, so any change is the prompt's).
    for plain in ("a cat in a field", "a dog in a field"):
        assert not np.array_equal(cycled, image(plain, 3))
    # Alternatives that are all one prompt are that prompt, call after call.
    assert np.array_equal(image("a (cat|cat) in a field", 3), image("a cat in a field", 3))
    # Alternatives of different lengths are encoded to the same windows (no shape mismatch).
    long = image("a (cat|" + "dog " * 100 + ") in a field", 2)
    assert long.shape == cycled.shape


@pytest.mark.parametrize(
    ("pipeline", "cycles"),
    [
        ("txt2img", True),
        ("img2img", True),
        ("inpaint", True),
        ("lpw", False),
        ("panorama", False),
        ("txt2img-sdxl", False),
    ],
)
def test_alternatives_cycle_on_the_pipelines_onnx_web_cycles_them(pipeline: str, cycles: bool) -> None:
    assert Generation.from_params(stage_params(pipeline=pipeline)).alternatives is cycles


def test_cancellation_stops_the_loop(models_path: Path, sessions: SessionCache) -> None:
    recorder = Recorder(models_path, sessions, cancel_after=2)
    with pytest.raises(StageCancelled):
        run_stage(source_txt2img.STAGE, recorder.ctx, stage_params(steps=10), [])
    assert recorder.steps == 2
    assert recorder.checks == 2


def test_stage_appends_to_its_inputs_and_records_metadata(models_path: Path, sessions: SessionCache) -> None:
    recorder = Recorder(models_path, sessions)
    existing = StageImage(Image.new("RGB", (8, 8)), {"params": {"prompt": "earlier"}})
    params = stage_params(
        prompt="a cat <lora:details:0.5> || a dog <inversion:autumn:1>",
        negative_prompt="blurry <embeddings:bad:-0.25>",
        input_prompt="a __animal__ <lora:details:0.5> || a dog <inversion:autumn:1>",
        input_negative_prompt="blurry <embeddings:bad:-0.25>",
        batch=2,
        unet_tile=256,
        thumbnail=False,
    )
    results = run_stage(source_txt2img.STAGE, recorder.ctx, params, [existing])
    assert len(results) == 3
    assert results[0] is existing
    hash_line = (models_path / DEMO_MODEL / "hash.txt").read_text().splitlines()[0]
    metadata = results[1].metadata
    assert metadata["params"] == {
        "model": DEMO_MODEL,
        "pipeline": "txt2img",
        "scheduler": "ddim",
        "prompt": "a cat <lora:details:0.5>",
        "negative_prompt": "blurry <embeddings:bad:-0.25>",
        "cfg": 6.0,
        "seed": 42,
        "steps": 4,
        "eta": 0.0,
        "batch": 2,
        "control": "",
        "input_prompt": "a __animal__ <lora:details:0.5> || a dog <inversion:autumn:1>",
        "input_negative_prompt": "blurry <embeddings:bad:-0.25>",
        "loopback": 0,
        "tiled_vae": False,
        "unet_overlap": 0.25,
        "unet_tile": 256,
        "vae_overlap": 0.25,
        "vae_tile": 512,
        "denoise": 3,
        "thumbnail": False,
    }
    assert metadata["input_size"] == metadata["size"] == {"width": 64, "height": 48}
    assert metadata["models"] == [{"name": DEMO_MODEL, "hash": hash_line, "weight": 1.0}]
    assert metadata["loras"] == [{"name": "details", "weight": 0.5, "hash": "unknown"}]
    assert metadata["inversions"] == [{"name": "bad", "weight": -0.25, "hash": "unknown"}]
    assert results[2].metadata == metadata
    assert results[2].metadata is not metadata


def test_prompt_tokens_are_removed_before_encoding(demo_model: DiffusionModel) -> None:
    plain = generate(demo_model, prompt="a cat ")
    # <clip:skip:1> is no skip: the last layer, as without the token.
    tagged = generate(demo_model, prompt="a cat <lora:details:0.5><clip:skip:1>")
    assert np.array_equal(array(plain[0]), array(tagged[0]))


def test_a_reseed_token_redraws_the_starting_noise_of_its_rectangle(
    demo_model: DiffusionModel, models_path: Path, sessions: SessionCache
) -> None:
    """onnx-web's txt2img stage reseeds its starting latents on every txt2img pipeline, not only
    panorama: the left 32 x 48 pixels start from seed 9's noise, the rest from the image seed's."""
    prompt = "a photo of a cat <reseed:0:0:48:32:9>"
    run = Run(demo_model, Generation.from_params(stage_params(prompt=prompt)))
    scheduler = run.scheduler()
    sigma = float(scheduler.init_noise_sigma)
    reseeded, plain = run.starting_latents(scheduler, reseeded=True), run.starting_latents(scheduler)
    assert np.array_equal(reseeded[..., :4], initial_latents(9, 1, 32, 48) * sigma)
    assert np.array_equal(reseeded[..., 4:], plain[..., 4:])
    # Unasked (the img2img route's ControlNet and pix2pix start from noise too), the token is left out.
    assert np.array_equal(plain, initial_latents(42, 1, 64, 48) * sigma)

    recorder = Recorder(models_path, sessions)
    [with_token] = run_stage(source_txt2img.STAGE, recorder.ctx, stage_params(prompt=prompt), [])
    [without] = run_stage(source_txt2img.STAGE, recorder.ctx, stage_params(prompt="a photo of a cat "), [])
    assert np.abs(array(with_token.image) - array(without.image)).mean() > 1


def test_prompt_index_selects_the_prompt_stage(models_path: Path, sessions: SessionCache) -> None:
    recorder = Recorder(models_path, sessions)
    [second] = run_stage(
        source_txt2img.STAGE, recorder.ctx, stage_params(prompt="a cat || a dog", prompt_index=1), []
    )
    [dog] = run_stage(source_txt2img.STAGE, recorder.ctx, stage_params(prompt="a dog"), [])
    assert second.metadata["params"]["prompt"] == "a dog"
    assert np.array_equal(array(second.image), array(dog.image))


def test_generates_the_requested_size_beyond_unet_tile(models_path: Path, sessions: SessionCache) -> None:
    recorder = Recorder(models_path, sessions)
    [result] = run_stage(
        source_txt2img.STAGE, recorder.ctx, stage_params(width=160, height=32, unet_tile=128, steps=1), []
    )
    assert result.image.size == (160, 32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 60}, "multiples of 8"),
        ({"seed": -1}, "seed"),
        ({"scheduler": "karras-ve"}, "unknown scheduler"),
        ({"model": "../missing"}, "no diffusion model"),
    ],
)
def test_bad_params_fail_with_a_clear_error(
    models_path: Path, sessions: SessionCache, changes: dict[str, Any], message: str
) -> None:
    recorder = Recorder(models_path, sessions)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_stage(source_txt2img.STAGE, recorder.ctx, stage_params(**changes), [])

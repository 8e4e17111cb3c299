"""``source-noise``, ``source-url``, ``source-s3`` and ``blend-denoise-localstd``, checked numerically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageImage
from pipelines.imageops.noise import noise_normal, noise_uniform
from pipelines.stages import blend_denoise_localstd, source_noise, source_s3, source_url
from pipelines.stages.blend_denoise_localstd import WINDOW, denoise_local_std
from tests.unit.pipelines.contexts import stage_context
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resolved import run_stage


def _image(size: tuple[int, int] = (24, 16), seed: int = 4) -> Image.Image:
    return random_image(size, seed)


# -- source-noise --------------------------------------------------------------------------------


def test_noise_without_inputs_is_one_seeded_image_of_the_stage_size() -> None:
    steps: list[int] = []
    params = {"noise_source": "uniform", "width": 48, "height": 32, "seed": 11}
    [out] = run_stage(source_noise.STAGE, stage_context(steps=steps), params, [])
    expected = noise_uniform(Image.new("RGB", (48, 32)), (48, 32), (0, 0), "white", np.random.default_rng(11))
    assert np.array_equal(np.asarray(out.image), np.asarray(expected))
    assert out.metadata == {"size": {"width": 48, "height": 32}}
    assert steps == [1]
    [again] = run_stage(source_noise.STAGE, stage_context(), params, [])
    [other] = run_stage(source_noise.STAGE, stage_context(), {**params, "seed": 12}, [])
    assert np.array_equal(np.asarray(again.image), np.asarray(out.image))
    assert not np.array_equal(np.asarray(other.image), np.asarray(out.image))


def test_noise_replaces_each_input_with_noise_made_from_it() -> None:
    two_colours = Image.new("RGB", (20, 10), (10, 20, 30))
    two_colours.paste((200, 150, 100), (0, 0, 10, 10))
    params = {"noise_source": "histogram", "width": 64, "height": 64, "seed": 3}
    out = run_stage(
        source_noise.STAGE,
        stage_context(),
        params,
        [StageImage(two_colours, {"note": 1}), StageImage(_image())],
    )
    assert len(out) == 2 and out[0].metadata == {"note": 1, "size": {"width": 64, "height": 64}}
    pixels = np.asarray(out[0].image)
    for channel, levels in enumerate(((10, 200), (20, 150), (30, 100))):
        assert set(np.unique(pixels[..., channel])) == set(levels)
    assert 0.3 < (pixels[..., 0] == 200).mean() < 0.7  # half the source is each colour


def test_noise_defaults_and_bad_params() -> None:
    [normal] = run_stage(source_noise.STAGE, stage_context(), {"noise_source": "normal", "seed": 5}, [])
    pixels = np.asarray(normal.image, float)
    assert normal.image.size == (512, 512)
    assert abs(pixels.mean() - 128) < 1 and abs(pixels.std() - 32) < 1
    expected = noise_normal(
        Image.new("RGB", (512, 512)), (512, 512), (0, 0), "white", np.random.default_rng(5)
    )
    assert np.array_equal(pixels, np.asarray(expected, float))
    [fill] = run_stage(
        source_noise.STAGE,
        stage_context(),
        {"noise_source": "fill-mask", "fill_color": "#336699", "width": 8, "seed": 0},
        [],
    )
    assert np.all(np.asarray(fill.image) == (0x33, 0x66, 0x99)) and fill.image.size == (8, 512)
    for params, message in (
        ({"noise_source": "perlin", "seed": 1}, "params.noise_source: must be one of fill-edge"),
        ({"width": 0, "seed": 1}, "params.width: must be an integer from 1 to 8192, got 0"),
        ({"fill_color": "nope", "seed": 1}, "params.fill_color: must be a colour"),
        # (The upper bound, 2**32 - 1, is printed with ``:g``; only the rule and the value are checked.)
        ({"seed": -1}, "params.seed: must be an integer from 0 to .*, got -1$"),
        ({"width": 8}, "params.seed: is required by source-noise"),
    ):
        with pytest.raises(ValueError, match=message):
            run_stage(source_noise.STAGE, stage_context(), params, [])


# -- source-url and source-s3 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "kind", "field"), [(source_url, "url", "source_urls"), (source_s3, "s3", "source_keys")]
)
def test_prefetched_images_are_appended_in_listed_order(stage, kind: str, field: str) -> None:  # type: ignore[no-untyped-def]
    first, second = _image(seed=1), Image.new("RGBA", (5, 7), (1, 2, 3, 4))
    inputs = {f"{kind}:get:0": first, f"{kind}:get:1": second, f"{kind}:other:0": _image(seed=9)}
    earlier = StageImage(_image(seed=2), {"note": 1})
    steps: list[int] = []
    params = {"stage_name": "get", field: "a.png, b.png", "bucket": "inbox"}
    out = stage.run(stage_context(inputs, steps), params, [earlier])
    assert out[0] is earlier and len(out) == 3
    assert np.array_equal(np.asarray(out[1].image), np.asarray(first))
    assert out[2].image.mode == "RGB" and np.all(np.asarray(out[2].image) == (1, 2, 3))
    assert out[2].metadata == {"size": {"width": 5, "height": 7}}
    assert steps == [1]
    with pytest.raises(KeyError, match=f"did not prefetch '{kind}:get:2'"):
        stage.run(stage_context(inputs), {**params, field: "a,b,c"}, [])
    with pytest.raises(ValueError, match=field):
        stage.run(stage_context(inputs), {"stage_name": "get"}, [])


# -- blend-denoise-localstd ----------------------------------------------------------------------


def _reference(image: Image.Image, strength: float, spread: float) -> np.ndarray:
    """The rule of the module docstring, pixel by pixel, as the original loop computed it."""
    pixels = np.asarray(image, dtype=np.float64)
    half = WINDOW // 2
    padded = np.pad(pixels, ((half, half), (half, half), (0, 0)), mode="edge")
    out = pixels.copy()
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            window = padded[y : y + WINDOW, x : x + WINDOW].reshape(-1, 3)
            median, deviation = np.median(window, axis=0), window.std(axis=0)
            distance = np.abs(pixels[y, x] - median)
            if np.any((distance > deviation + strength) & (distance < deviation + strength * spread)):
                out[y, x] = median
    return out


def test_localstd_matches_the_per_pixel_rule() -> None:
    rng = np.random.default_rng(8)
    noisy = np.clip(100 + rng.normal(0, 6, (20, 28, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    for strength, spread in ((5, 4), (2, 10), (8, 2)):
        expected = _reference(image, strength, spread)
        actual = np.asarray(denoise_local_std(image, strength, spread), dtype=np.float64)
        assert np.array_equal(actual, expected), (strength, spread)
        assert not np.array_equal(actual, noisy)


def test_localstd_removes_faint_speckles_and_keeps_strong_ones_and_edges() -> None:
    pixels = np.full((20, 30, 3), 100, np.uint8)
    pixels[:, 20:] = 200  # an edge
    pixels[5, 5] = (120, 100, 100)  # faint: within strength * range of the neighbourhood
    pixels[12, 8] = (160, 160, 160)  # strong: beyond it, detail rather than noise
    steps: list[int] = []
    [out] = run_stage(
        blend_denoise_localstd.STAGE,
        stage_context(steps=steps),
        {},
        [StageImage(Image.fromarray(pixels), {"n": 1})],
    )
    result = np.asarray(out.image)
    assert tuple(result[5, 5]) == (100, 100, 100)
    assert tuple(result[12, 8]) == (160, 160, 160)
    assert np.array_equal(result[:, 15:], pixels[:, 15:])
    assert out.metadata == {"n": 1, "size": {"width": 30, "height": 20}}
    assert steps == [1]
    for spread in (0.5, 0):
        with pytest.raises(ValueError, match=f"params.range: must be an integer from 1 to 64, got {spread}$"):
            run_stage(
                blend_denoise_localstd.STAGE,
                stage_context(),
                {"range": spread},
                [StageImage(Image.fromarray(pixels))],
            )

"""Noise sources, mask filters, outpaint canvas expansion, mask fitting and source filters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipelines.imageops.filters import (
    FILTERS_AVAILABLE,
    SOURCE_FILTERS,
    FilterUnavailable,
    apply_source_filter,
)
from pipelines.imageops.masks import MASK_FILTERS, expand_canvas, fit_mask, mask_filter_none
from pipelines.imageops.noise import NOISE_SOURCES, noise_fill_mask, noise_uniform

DIMS = (256, 192)


def _source(size: tuple[int, int] = (32, 24), seed: int = 5) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _noise(name: str, seed: int, fill: str = "white", image: Image.Image | None = None) -> np.ndarray:
    source = image if image is not None else _source()
    out = NOISE_SOURCES[name](source, DIMS, (40, 30), fill, np.random.default_rng(seed))
    assert out.size == DIMS and out.mode == "RGB"
    return np.asarray(out).astype(np.float64)


def test_the_sources_are_listed_in_api_order() -> None:
    assert list(NOISE_SOURCES) == ["fill-edge", "fill-mask", "gaussian", "histogram", "normal", "uniform"]


@pytest.mark.parametrize("name", ["gaussian", "histogram", "normal", "uniform"])
def test_random_sources_repeat_per_seed_and_differ_across_seeds(name: str) -> None:
    assert np.array_equal(_noise(name, 1), _noise(name, 1))
    assert not np.array_equal(_noise(name, 1), _noise(name, 2))


def test_uniform_spans_every_level_evenly() -> None:
    levels = _noise("uniform", 3)
    assert levels.min() == 0 and levels.max() == 255
    assert abs(levels.mean() - 127.5) < 1.0
    assert abs(levels.std() - np.sqrt((256**2 - 1) / 12)) < 0.5
    counts = np.bincount(levels.astype(int).ravel(), minlength=256)
    assert counts.min() > 0.8 * counts.mean()


def test_normal_has_mean_128_and_deviation_32() -> None:
    levels = _noise("normal", 4)
    assert abs(levels.mean() - 128) < 0.5
    assert abs(levels.std() - 32) < 0.5


def test_histogram_draws_each_channel_from_the_source_levels() -> None:
    source = np.zeros((20, 20, 3), dtype=np.uint8)
    source[..., 0] = 10
    source[:5, :, 0] = 200  # red: a quarter of the pixels at 200, the rest at 10
    source[..., 1] = 77
    source[..., 2] = np.arange(20, dtype=np.uint8)[None, :] * 10
    levels = _noise("histogram", 5, image=Image.fromarray(source))
    red = levels[..., 0]
    assert set(np.unique(red)) == {10, 200}
    assert abs((red == 200).mean() - 0.25) < 0.01
    assert np.all(levels[..., 1] == 77)
    assert set(np.unique(levels[..., 2])) == set(range(0, 200, 10))


def test_gaussian_is_blurred_noise_around_the_source() -> None:
    source = Image.new("RGB", (64, 64), (250, 0, 0))
    levels = _noise("gaussian", 6, image=source)
    far = levels[150:, 150:]
    assert abs(far.mean() - 127.5) < 3
    assert far.std() < 10, "three blurs leave little of uniform noise's deviation of 74"
    centre = levels[30 + 32, 40 + 32]
    assert centre[0] > 240 and centre[1] < 10, "the source shows through in the middle"


def test_fill_sources() -> None:
    source = _source()
    edge = _noise("fill-edge", 0, fill="#102030", image=source)
    assert np.array_equal(edge[30:54, 40:72], np.asarray(source))
    assert np.all(edge[:30] == (16, 32, 48)) and np.all(edge[:, 72:] == (16, 32, 48))
    assert np.all(_noise("fill-mask", 0, fill="blue") == (0, 0, 255))
    with pytest.raises(ValueError):
        _noise("fill-mask", 0, fill="not-a-colour")


def _square_mask() -> Image.Image:
    mask = Image.new("L", (40, 40), 255)
    mask.paste(0, (10, 10, 30, 30))  # a black square to keep, in the middle
    return mask


def test_mask_filter_none_pastes_on_white() -> None:
    out = np.asarray(mask_filter_none(_square_mask(), (60, 50), (5, 5)))
    assert out.shape == (50, 60)
    assert np.all(out[15:35, 15:35] == 0)
    assert out.sum() == 255 * (60 * 50 - 20 * 20)


def test_gaussian_multiply_grows_the_kept_area_and_screen_shrinks_it() -> None:
    plain = np.asarray(MASK_FILTERS["none"](_square_mask(), (40, 40), (0, 0))).astype(int)
    multiplied = np.asarray(MASK_FILTERS["gaussian-multiply"](_square_mask(), (40, 40), (0, 0))).astype(int)
    screened = np.asarray(MASK_FILTERS["gaussian-screen"](_square_mask(), (40, 40), (0, 0))).astype(int)
    assert np.all(multiplied <= plain) and np.all(screened >= plain)
    assert multiplied[20, 8] < 128, "just outside the black square turns dark"
    assert screened[20, 12] > 128, "just inside the black square turns light"
    assert list(MASK_FILTERS) == ["none", "gaussian-multiply", "gaussian-screen"]


def test_fit_mask_scales_to_the_larger_side_then_crops() -> None:
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 20, 20))  # top-left quarter white
    fitted = np.asarray(fit_mask(mask, (80, 40)))
    assert fitted.shape == (40, 80)
    assert np.all(fitted[:38, :38] == 255) and np.all(fitted[:, 42:] == 0)


def test_expand_canvas_fills_the_border_with_tinted_noise_and_masks_it_white() -> None:
    source = _source()
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, 4, 4))
    border = {"left": 8, "right": 16, "top": 0, "bottom": 4}

    image, full_mask = expand_canvas(
        source, mask, border, noise_uniform, "#808080", rng=np.random.default_rng(9)
    )
    assert image.size == full_mask.size == (56, 28)
    pixels, masked = np.asarray(image).astype(int), np.asarray(full_mask)
    noise = np.asarray(noise_uniform(source, (56, 28), (8, 0), "#808080", np.random.default_rng(9))).astype(
        int
    )
    tinted = (noise * 128 + 127) // 255  # PIL's multiply, rounded
    assert np.all(masked[:, :8] == 255) and np.all(masked[24:] == 255) and np.all(masked[:, 40:] == 255)
    assert np.abs(pixels[:, :8] - tinted[:, :8]).max() <= 1
    assert np.array_equal(pixels[4:24, 12:40], np.asarray(source)[4:24, 4:32]), "kept pixels are untouched"
    assert np.all(masked[0:4, 8:12] == 255) and np.all(masked[4:24, 12:40] == 0)
    assert np.abs(pixels[0:4, 8:12] - tinted[0:4, 8:12]).max() <= 1, "the masked area gets noise too"

    flat, _ = expand_canvas(source, mask, {"top": 2}, noise_fill_mask, "red")
    assert np.all(np.asarray(flat)[:2] == (255, 0, 0))
    with pytest.raises(ValueError, match="negative"):
        expand_canvas(source, mask, {"left": -1}, noise_fill_mask, "red")


def test_canny_draws_the_edges() -> None:
    step = np.zeros((32, 32, 3), dtype=np.uint8)
    step[:, 16:] = 255
    edges = np.asarray(apply_source_filter("canny", Image.fromarray(step), np.random.default_rng(0)))
    assert edges.shape == (32, 32, 3)
    edge_columns = set(np.nonzero(edges[..., 0].max(axis=0))[0])
    assert edge_columns and edge_columns <= {15, 16}
    assert set(np.unique(edges)) == {0, 255}


def test_gaussian_noise_and_none_filters() -> None:
    source = _source((48, 48))
    blurred = apply_source_filter("gaussian", source, np.random.default_rng(0))
    assert np.array_equal(np.asarray(blurred), np.asarray(source.filter(ImageFilter.GaussianBlur(5))))
    assert apply_source_filter("none", source, np.random.default_rng(0)) is source
    noisy = [np.asarray(apply_source_filter("noise", source, np.random.default_rng(s))) for s in (1, 1, 2)]
    assert np.array_equal(noisy[0], noisy[1]) and not np.array_equal(noisy[0], noisy[2])
    assert np.abs(noisy[0].astype(int) - np.asarray(source)).max() <= 128


def test_filters_that_need_models_fail_naming_the_filter() -> None:
    assert set(FILTERS_AVAILABLE) <= set(SOURCE_FILTERS) and len(SOURCE_FILTERS) == 12
    with pytest.raises(FilterUnavailable, match="'depth'"):
        apply_source_filter("depth", _source(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="'sepia'"):
        apply_source_filter("sepia", _source(), np.random.default_rng(0))

"""Tiled VAE: tile placement, blending without seams, one tile per VAE call, and the stage params."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageContext
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import DiffusionModel, Generation, Run, decode_latents, encode_image
from pipelines.diffusion.vae_tiling import VaeTiling, axis_weights, decode_tiled, encode_tiled, tile_starts
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img, source_txt2img
from tests.unit.pipelines.resolved import RESOLVED, run_stage

FACTOR = 8


@pytest.mark.parametrize(
    ("length", "size", "stride"), [(10, 16, 12), (16, 16, 12), (40, 16, 12), (41, 16, 1)]
)
def test_tiles_are_whole_and_cover_every_cell(length: int, size: int, stride: int) -> None:
    starts = tile_starts(length, size, stride)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert start >= 0 and start + min(size, length) <= length
        covered[start : start + size] = True
    assert covered.all()
    assert starts == sorted(set(starts))


@pytest.mark.parametrize(("length", "size", "stride"), [(40, 16, 12), (48, 16, 8), (33, 16, 15)])
def test_weights_of_overlapping_tiles_add_up_to_one(length: int, size: int, stride: int) -> None:
    starts = tile_starts(length, size, stride)
    total = np.zeros(length * FACTOR)
    for start, weight in zip(starts, axis_weights(starts, size, length, FACTOR), strict=True):
        total[start * FACTOR : (start + size) * FACTOR] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def cell_decoder(latents: np.ndarray) -> np.ndarray:
    """A VAE stand-in that sees one latent cell at a time: tiling must not change its output."""
    mixed = np.einsum("oc,bchw->bohw", np.arange(12, dtype=np.float32).reshape(3, 4) / 10, latents)
    return np.kron(mixed, np.ones((1, 1, FACTOR, FACTOR), dtype=np.float32))


def cell_encoder(pixels: np.ndarray) -> np.ndarray:
    """The encoder counterpart: each latent cell from its own 8x8 pixel block."""
    batch, channels, height, width = pixels.shape
    blocks = pixels.reshape(batch, channels, height // FACTOR, FACTOR, width // FACTOR, FACTOR)
    return np.concatenate([blocks.mean(axis=(3, 5)), blocks.max(axis=(3, 5))[:, :1]], axis=1)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_tiles_are_placed_and_blended_exactly(overlap: float) -> None:
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, 37, 50)).astype(np.float32)
    tiling = VaeTiling(128, overlap)
    np.testing.assert_allclose(
        decode_tiled(cell_decoder, latents, tiling, FACTOR), cell_decoder(latents), atol=1e-5
    )
    pixels = rng.standard_normal((1, 3, 37 * FACTOR, 50 * FACTOR)).astype(np.float32)
    np.testing.assert_allclose(
        encode_tiled(cell_encoder, pixels, tiling, FACTOR), cell_encoder(pixels), atol=1e-5
    )


def padded_decoder(latents: np.ndarray) -> np.ndarray:
    """A VAE stand-in with a 3x3 receptive field and zero padding, so a tile's edge cells darken."""
    height, width = latents.shape[2:]
    padded = np.pad(latents[:, :3], ((0, 0), (0, 0), (1, 1), (1, 1)))
    blurred = sum(padded[:, :, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9
    return np.kron(blurred, np.ones((1, 1, FACTOR, FACTOR), dtype=np.float32))


class FakeSession:
    """An ONNX Runtime session stand-in running ``function`` and recording the shapes it was given."""

    def __init__(self, function: Any, input_name: str) -> None:
        self.function = function
        self.input_name = input_name
        self.shapes: list[tuple[int, ...]] = []

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=self.input_name, type="tensor(float)")]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name="output", type="tensor(float)")]

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.shapes.append(feed[self.input_name].shape)
        return [self.function(feed[self.input_name])]


def fake_model(folder: Path, session: FakeSession) -> DiffusionModel:
    """A model whose VAE decoder is ``session``, with SD's 8 pixels per latent cell and no scaling."""
    (folder / "vae_decoder").mkdir(parents=True)
    config = {"scaling_factor": 1.0, "block_out_channels": [8, 8, 8, 8]}
    (folder / "vae_decoder" / "config.json").write_text(json.dumps(config))
    return DiffusionModel(folder, SimpleNamespace(get=lambda path: session))


def smooth_latents(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [0.6 * np.sin(x / 9 + phase) * np.cos(y / 11 - phase) for phase in (0.0, 1.0, 2.0, 3.0)]
    return np.stack(channels)[None]


def border_gradients(image: Image.Image, tiling: VaeTiling, axis: int) -> tuple[int, int]:
    """The largest step between neighbouring pixels near tile edges along ``axis``, and elsewhere.

    "Near" is within one latent cell: a seam is the darkened edge cell of each tile, so it shows
    on both sides of the edge. The image's own first and last cells (in both directions) are
    left out: the VAE's padding marks them in the whole decode too.
    """
    pixels = np.moveaxis(np.asarray(image).astype(np.int16), axis, 0)[:, FACTOR:-FACTOR]
    steps = np.abs(np.diff(pixels, axis=0)).max(axis=(1, 2))
    size, stride = tiling.cells(FACTOR)
    starts = tile_starts(pixels.shape[0] // FACTOR, size, stride)
    edges = {start * FACTOR for start in starts[1:]} | {(start + size) * FACTOR for start in starts[:-1]}
    at_edges = sorted({edge - 1 + shift for edge in edges for shift in range(-FACTOR, FACTOR + 1)})
    interior = [index for index in range(FACTOR, len(steps) - FACTOR) if index not in at_edges]
    return int(steps[at_edges].max()), int(steps[interior].max())


@pytest.mark.parametrize("axis", [0, 1])
def test_blended_tiles_leave_no_seams_where_butted_tiles_do(tmp_path: Path, axis: int) -> None:
    model = fake_model(tmp_path / "fake", FakeSession(padded_decoder, "latent_sample"))
    # One row (or column) of 16-cell tiles, so every tile edge crosses ``axis``.
    latents = smooth_latents(*((48, 16) if axis == 0 else (16, 48)))
    whole = np.asarray(decode_latents(model, latents)[0]).astype(np.int16)
    blended_tiling = VaeTiling(128, 0.25)
    blended = decode_latents(model, latents, blended_tiling)[0]
    at_edges, elsewhere = border_gradients(blended, blended_tiling, axis)
    assert at_edges <= elsewhere + 2
    # The same tiles butted together (no overlap: 16-cell tiles on 48 cells) show their darkened
    # edges as seams: the measure above does see them.
    butted_tiling = VaeTiling(128, 0.0)
    butted = decode_latents(model, latents, butted_tiling)[0]
    at_edges, elsewhere = border_gradients(butted, butted_tiling, axis)
    assert at_edges > elsewhere + 10
    blended_error = np.abs(np.asarray(blended) - whole).mean()
    assert blended_error < np.abs(np.asarray(butted) - whole).mean() / 2


class SpySessions:
    """The shared session cache, with the VAE sessions wrapped to record every input shape."""

    def __init__(self, sessions: SessionCache) -> None:
        self.sessions = sessions
        self.shapes: dict[str, list[tuple[int, ...]]] = {"vae_decoder": [], "vae_encoder": []}

    def get(self, path: Path) -> Any:
        session = self.sessions.get(path)
        component = Path(path).parent.name
        if component not in self.shapes:
            return session
        shapes = self.shapes[component]

        class Spy:
            def get_inputs(self) -> Any:
                return session.get_inputs()

            def get_outputs(self) -> Any:
                return session.get_outputs()

            def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> Any:
                shapes.extend(value.shape for value in feed.values())
                return session.run(outputs, feed)

        return Spy()


def test_large_latents_reach_the_vae_one_tile_at_a_time(
    demo_model: DiffusionModel, sessions: SessionCache
) -> None:
    spy = SpySessions(sessions)
    model = DiffusionModel(demo_model.folder, spy)
    latents = np.random.default_rng(1).standard_normal((1, 4, 40, 56)).astype(np.float32) * 0.18215
    (image,) = decode_latents(model, latents, VaeTiling(128, 0.25))
    assert image.size == (448, 320)
    # 16-cell tiles every 12 cells: rows start at 0, 12, 24; columns at 0, 12, 24, 36, 40.
    assert spy.shapes["vae_decoder"] == [(1, 4, 16, 16)] * 15


def test_tiled_decode_of_the_demo_vae_stays_close_to_the_whole_decode(demo_model: DiffusionModel) -> None:
    """Measured: mean difference 2.4 levels, 99th percentile 13, worst pixel 44 (of 255).

    The random-weight VAE normalises (GroupNorm) and attends over all it sees, so each tile's
    statistics differ from the whole image's; a trained VAE's are far more alike across tiles.
    """
    latents = np.random.default_rng(0).standard_normal((1, 4, 32, 48)).astype(np.float32) * 0.18215
    whole = np.asarray(decode_latents(demo_model, latents)[0]).astype(np.int16)
    tiled = np.asarray(decode_latents(demo_model, latents, VaeTiling(256, 0.5))[0]).astype(np.int16)
    difference = np.abs(tiled - whole)
    assert difference.mean() <= 3
    assert np.percentile(difference, 99) <= 16


def test_tiled_encode_of_the_demo_vae_stays_close_to_the_whole_encode(demo_model: DiffusionModel) -> None:
    """Measured: the mean difference is 4% of the mean latent magnitude (GroupNorm again)."""
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, 192, 384)).astype(np.float32)
    whole = encode_image(demo_model, pixels)
    tiled = encode_image(demo_model, pixels, VaeTiling(256, 0.5))
    assert tiled.shape == whole.shape == (1, 4, 24, 48)
    assert np.abs(tiled - whole).mean() <= 0.1 * np.abs(whole).mean()


def stage_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **RESOLVED,
        "model": "stable-diffusion-onnx-v1-5",
        "scheduler": "ddim",
        "prompt": "a red door",
        "seed": 4,
        "steps": 2,
        "cfg": 6.0,
        "width": 256,
        "height": 192,
        "tiled_vae": True,
        "vae_tile": 128,
        "vae_overlap": 0.5,
    }
    return {**params, **changes}


def test_stages_tile_the_vae_when_their_params_ask(models_path: Path, sessions: SessionCache) -> None:
    spy = SpySessions(sessions)
    ctx = StageContext(models_path=models_path, sessions=spy)
    (generated,) = run_stage(source_txt2img.STAGE, ctx, stage_params(), [])
    assert generated.image.size == (256, 192)
    # 16-cell tiles every 8 cells over 32 x 24 latent cells: 2 rows of 3.
    assert spy.shapes["vae_decoder"] == [(1, 4, 16, 16)] * 6
    spy.shapes["vae_decoder"].clear()
    run_stage(blend_img2img.STAGE, ctx, stage_params(strength=0.5), [generated])
    assert spy.shapes["vae_encoder"] == [(1, 3, 128, 128)] * 6
    assert spy.shapes["vae_decoder"] == [(1, 4, 16, 16)] * 6


def test_stages_run_the_vae_whole_by_default(models_path: Path, sessions: SessionCache) -> None:
    spy = SpySessions(sessions)
    ctx = StageContext(models_path=models_path, sessions=spy)
    run_stage(source_txt2img.STAGE, ctx, stage_params(tiled_vae=False), [])
    assert spy.shapes["vae_decoder"] == [(1, 4, 24, 32)]


def test_tiling_params_are_checked() -> None:
    tiling = {"tiled_vae": True, "vae_tile": 512, "vae_overlap": 0.25}
    assert VaeTiling.from_params({**tiling, "tiled_vae": False, "vae_tile": 64}) is None
    assert VaeTiling.from_params(tiling) == VaeTiling(512, 0.25)
    assert VaeTiling.from_params({**tiling, "vae_tile": 256, "vae_overlap": 0.5}) == VaeTiling(256, 0.5)
    with pytest.raises(ValueError, match="vae_tile"):
        VaeTiling.from_params({**tiling, "vae_tile": 64})
    with pytest.raises(ValueError, match="vae_overlap"):
        VaeTiling.from_params({**tiling, "vae_overlap": 0.95})
    # The stored params carry every value: nothing is defaulted here.
    with pytest.raises(KeyError, match="vae_overlap"):
        VaeTiling.from_params({"tiled_vae": True, "vae_tile": 512})
    with pytest.raises(ValueError, match="vae_overlap"):
        VaeTiling(256, 0.95)


def test_inpainting_encodes_and_decodes_in_tiles(
    sessions: SessionCache, inpaint_model: DiffusionModel
) -> None:
    spy = SpySessions(sessions)
    model = DiffusionModel(inpaint_model.folder, spy)
    generation = Generation(
        model="stable-diffusion-onnx-v1-inpainting",
        scheduler="ddim",
        prompt="a door",
        negative_prompt=None,
        seed=1,
        steps=1,
        cfg=1.0,
        eta=0.0,
        batch=1,
        width=256,
        height=128,
        vae_tiling=VaeTiling(128, 0.0),
    )
    mask = Image.new("L", (256, 128), "black")
    mask.paste(255, (64, 32, 192, 96))
    (image,) = inpaint(Run(model, generation), Image.new("RGB", (256, 128), "gray"), mask)
    assert image.size == (256, 128)
    # The masked source is encoded, and the result decoded, as two 128-pixel tiles side by side.
    assert spy.shapes["vae_encoder"] == [(1, 3, 128, 128)] * 2
    assert spy.shapes["vae_decoder"] == [(1, 4, 16, 16)] * 2

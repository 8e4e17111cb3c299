"""Live previews: the TAESD decoder's export against diffusers, ``decode_preview`` on the demo
decoders, and the ``on_latents`` hook of the denoise loops (SD, SDXL, panorama, the batched loop;
none from the x4 upscaler)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from pipelines.chain import run_chain
from pipelines.context import StageImage
from pipelines.diffusion.model import Callbacks, DiffusionModel, Run, decode_latents, load_model
from pipelines.diffusion.panorama import panorama_latents
from pipelines.diffusion.preview import decode_preview
from pipelines.diffusion.upscale_sd import upscale_sd
from pipelines.gpu.batch import CpuDenoiser, Txt2ImgJob, txt2img_batch
from pipelines.models.cli import add_convert_arguments, run_convert
from pipelines.models.demo import DEMO_SDXL, DEMO_UPSCALER
from pipelines.models.preview import (
    PREVIEW_FOLDER,
    TAESD,
    export_preview_decoder,
    preview_model_path,
    random_preview_decoder,
)
from pipelines.models.sessions import SessionCache
from pipelines.stages import source_txt2img
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import demo_generation
from tests.unit.pipelines.resolved import IMAGE

#: ONNX Runtime against PyTorch on the same fp32 graph: both sum the same products in a different
#: order, ~1e-7 on outputs of order 1 (measured 2.4e-7); 1e-4 leaves room for other CPUs' kernels.
PARITY = 1e-4
#: A narrow ``AutoencoderTiny`` (one block per level, 8 channels): quick to export and to save.
NARROW: dict[str, Any] = {
    "encoder_block_out_channels": (8, 8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8, 8),
    "num_encoder_blocks": (1, 1, 1, 1),
    "num_decoder_blocks": (1, 1, 1, 1),
}


class Recorded:
    """An ``on_latents`` that calls the getter every step and keeps ``(step, family, latents)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, np.ndarray]] = []

    def __call__(self, step: int, family: str, latents: Callable[[], np.ndarray]) -> None:
        self.calls.append((step, family, latents()))

    @property
    def steps(self) -> list[tuple[int, str]]:
        return [(step, family) for step, family, _ in self.calls]

    @property
    def latents(self) -> list[np.ndarray]:
        return [latents for _, _, latents in self.calls]


def assert_denoising(latents: list[np.ndarray], shape: tuple[int, ...]) -> None:
    """Every array is a float32 ``shape`` of finite values, and each step changed them."""
    for array in latents:
        assert array.shape == shape and array.dtype == np.float32 and np.isfinite(array).all()
    for before, after in itertools.pairwise(latents):
        assert np.abs(after - before).max() > 1e-3


def txt2img_chain(**params: Any) -> dict[str, Any]:
    """A one-stage ``source-txt2img`` chain as the api stores it (its own defaults applied)."""
    # A size on the UNet's 64-px grid: the stage generates exactly it, uncropped.
    raw = {**IMAGE, "prompt": "a photo of a cat", "width": 64, "height": 128, "steps": 3, **params}
    resolved = {**raw, **source_txt2img.STAGE.resolve(raw)}
    return {"stages": [{"name": "source", "type": "source-txt2img", "params": resolved, "tiles": 8192}]}


def test_exported_decoder_matches_autoencoder_tiny_decode(tmp_path: Path) -> None:
    """TAESD's architecture (diffusers' default config), batch 2, a size unlike the traced 8x8."""
    tiny = random_preview_decoder(5)
    folder = export_preview_decoder(tiny, tmp_path / TAESD)
    assert folder == tmp_path / TAESD and sorted(path.name for path in tmp_path.iterdir()) == [TAESD]
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [item.name for item in graph.input] == ["latent_sample"]
    assert [item.name for item in graph.output] == ["sample"]

    latents = np.random.default_rng(0).standard_normal((2, 4, 6, 10)).astype(np.float32) * 3
    session = SessionCache(1).get(folder / "model.onnx")
    ours = session.run(None, {"latent_sample": latents})[0]
    with torch.no_grad():
        reference = tiny.decode(torch.from_numpy(latents)).sample.numpy()
    assert ours.shape == reference.shape == (2, 3, 48, 80)
    assert np.abs(ours - reference).max() <= PARITY
    assert np.abs(ours[0] - ours[1]).max() > 1e-3


def test_decoder_takes_the_loops_latents_as_the_pipelines_pass_them(tmp_path: Path) -> None:
    """A TAESD whose config scales latents is fed ``latents / scaling_factor``, as diffusers' pipelines do."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    tiny = AutoencoderTiny(**NARROW, scaling_factor=0.5)
    folder = export_preview_decoder(tiny, tmp_path / "scaled")
    latents = np.random.default_rng(1).standard_normal((1, 4, 5, 3)).astype(np.float32)
    ours = SessionCache(1).get(folder / "model.onnx").run(None, {"latent_sample": latents})[0]
    with torch.no_grad():
        reference = tiny.decode(torch.from_numpy(latents) / 0.5).sample.numpy()
    assert np.abs(ours - reference).max() <= PARITY


def test_convert_preview_command_exports_a_diffusers_folder(tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    AutoencoderTiny(**NARROW).save_pretrained(tmp_path / "source")
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser.add_subparsers(dest="command"))

    def convert(*argv: str) -> int:
        return run_convert(parser.parse_args(["convert", "preview", *argv, "--models", str(tmp_path)]))

    assert convert(str(tmp_path / "source"), TAESD) == 0
    assert preview_model_path(tmp_path, TAESD).is_file()
    assert convert(str(tmp_path / "missing"), "taesdxl") == 2
    assert not (tmp_path / PREVIEW_FOLDER / "taesdxl").exists()
    with pytest.raises(SystemExit):
        convert(str(tmp_path / "source"), "taesd3")


def test_decode_preview_gives_a_small_rgb_image_of_the_first_latents(
    models_path: Path, sessions: SessionCache
) -> None:
    latents = np.random.default_rng(2).standard_normal((2, 4, 12, 20)).astype(np.float32)
    image = decode_preview(models_path, sessions, "sd", latents, max_side=64)
    assert image is not None and image.mode == "RGB"
    # 160x96 decoded, shrunk to a longer side of 64: the latents' 5:3.
    assert image.size == (64, 38)
    full = decode_preview(models_path, sessions, "sd", latents, max_side=1024)
    assert full is not None and full.size == (160, 96)  # never enlarged
    alone = decode_preview(models_path, sessions, "sd", latents[:1], max_side=1024)
    assert alone is not None and (pixels([alone]) == pixels([full])).all()
    other = decode_preview(models_path, sessions, "sd", latents[1:], max_side=1024)
    xl = decode_preview(models_path, sessions, "sdxl", latents[:1], max_side=1024)
    assert other is not None and xl is not None
    assert (pixels([other]) != pixels([full])).any() and (pixels([xl]) != pixels([full])).any()


def test_decode_preview_is_none_without_the_decoder_and_refuses_unknown_families(
    tmp_path: Path, sessions: SessionCache
) -> None:
    latents = np.zeros((1, 4, 8, 8), dtype=np.float32)
    assert decode_preview(tmp_path, sessions, "sd", latents) is None
    with pytest.raises(ValueError, match="sd3"):
        decode_preview(tmp_path, sessions, "sd3", latents)


def test_txt2img_chain_reports_the_latents_of_every_step(models_path: Path, sessions: SessionCache) -> None:
    recorded = Recorded()
    result = run_chain(txt2img_chain(steps=3), models_path=models_path, sessions=sessions, preview=recorded)
    assert recorded.steps == [(1, "sd"), (2, "sd"), (3, "sd")]
    assert_denoising(recorded.latents, (1, 4, 16, 8))
    # The last step's latents are the scheduler's sample the image was decoded from.
    final = decode_latents(load_model(models_path, IMAGE["model"], sessions), recorded.latents[-1])[0]
    plain = run_chain(txt2img_chain(steps=3), models_path=models_path, sessions=sessions)
    for output in (*result.outputs, *plain.outputs):  # without a preview the chain runs as before
        assert isinstance(output, StageImage) and (pixels([output.image]) == pixels([final])).all()


def test_sdxl_chain_reports_family_sdxl(models_path: Path, sessions: SessionCache) -> None:
    recorded = Recorded()
    chain = txt2img_chain(model=DEMO_SDXL, pipeline="txt2img-sdxl", steps=2, batch=2)
    run_chain(chain, models_path=models_path, sessions=sessions, preview=recorded)
    assert recorded.steps == [(1, "sdxl"), (2, "sdxl")]
    assert_denoising(recorded.latents, (2, 4, 16, 8))


def test_panorama_reports_the_whole_wide_latents(demo_model: DiffusionModel) -> None:
    recorded = Recorded()
    gen = demo_generation(width=256, height=64, steps=2, scheduler="heun")
    latents = panorama_latents(Run(demo_model, gen, Callbacks(on_latents=recorded)), window=16, stride=8)
    # heun calls the UNet twice a step; a preview comes once per scheduler step.
    assert recorded.steps == [(1, "sd"), (2, "sd")]
    assert_denoising(recorded.latents, (1, 4, 8, 32))
    assert (recorded.latents[-1] == latents).all()


def test_batched_jobs_each_see_their_own_latents(demo_model: DiffusionModel) -> None:
    first, second = Recorded(), Recorded()
    base = demo_generation(steps=2, scheduler="euler-a")
    jobs = [
        Txt2ImgJob(dataclasses.replace(base, seed=1), on_latents=first),
        Txt2ImgJob(dataclasses.replace(base, seed=2, batch=2), on_latents=second),
    ]
    outcomes = txt2img_batch(demo_model, jobs, denoiser=CpuDenoiser(demo_model))
    assert all(outcome.error is None for outcome in outcomes)
    assert first.steps == second.steps == [(1, "sd"), (2, "sd")]
    assert_denoising(first.latents, (1, 4, 6, 8))
    assert_denoising(second.latents, (2, 4, 6, 8))
    alone = Recorded()
    txt2img_batch(demo_model, [dataclasses.replace(jobs[0], on_latents=alone)])
    assert np.abs(alone.latents[-1] - first.latents[-1]).max() < 1e-4


def test_the_x4_upscaler_reports_progress_but_no_latents(models_path: Path, sessions: SessionCache) -> None:
    """Its latents are the x4 VAE's, which no preview decoder reads."""
    recorded, steps = Recorded(), list[int]()
    gen = demo_generation(model=DEMO_UPSCALER, steps=2, width=16, height=16)
    hooks = Callbacks(on_step=steps.append, on_latents=recorded)
    upscale_sd(Run(load_model(models_path, DEMO_UPSCALER, sessions), gen, hooks), gradient(16, 16), 20)
    assert steps == [1, 1] and recorded.calls == []

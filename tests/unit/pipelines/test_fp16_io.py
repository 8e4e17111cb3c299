"""Every loop feeds a graph the types it declares: a CUDA worker's fused folders take fp16.

``convert --optimize gpu`` writes graphs whose inputs and outputs are fp16 (but for the timestep).
Only the txt2img path of ``pipelines.gpu`` ran them; every other loop handed them fp32 and ONNX
Runtime refused the call. ``onnx_graphs.fp16_io_copy`` gives the demo model the same interface on
graphs the CPU runs, so each mode is checked here against the fp32 model it was copied from: the
images may differ by fp16 rounding of what crosses the graphs' edges, nothing more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import DiffusionModel, Run, load_model
from pipelines.diffusion.sdxl import SdxlRun, txt2img_sdxl
from pipelines.diffusion.txt2img import txt2img
from pipelines.models.demo import DEMO_SDXL
from pipelines.models.sessions import SessionCache
from tests.unit.pipelines.conftest import DEMO_MODEL, INPAINT_MODEL
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.onnx_graphs import fp16_io_copy, input_types
from tests.unit.pipelines.reference import demo_generation

GENERATION = demo_generation(prompt="a house by the sea", negative_prompt="blurry", seed=3, steps=4, cfg=6.0)
#: Largest pixel difference (of 255) from the fp32 model: fp16 keeps about 3 significant digits of
#: the latents, embeddings and noise predictions that cross the graphs' edges (1 is what they make).
TOLERANCE = 2


@pytest.fixture(scope="module")
def fp16_models(models_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fp16-models")
    for name in (DEMO_MODEL, INPAINT_MODEL, DEMO_SDXL):
        fp16_io_copy(models_path / name, folder / name)
    return folder


def both(
    models_path: Path, fp16_models: Path, sessions: SessionCache, name: str
) -> tuple[DiffusionModel, ...]:
    return load_model(models_path, name, sessions), load_model(fp16_models, name, sessions)


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= TOLERANCE


def test_the_copy_has_the_fused_folders_interface(fp16_models: Path) -> None:
    unet = onnx.load(str(fp16_models / DEMO_MODEL / "unet" / "model.onnx"))
    assert input_types(unet) == {
        "sample": onnx.TensorProto.FLOAT16,
        "timestep": onnx.TensorProto.FLOAT,
        "encoder_hidden_states": onnx.TensorProto.FLOAT16,
    }
    assert unet.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_txt2img_on_the_worker_sessions(models_path: Path, fp16_models: Path, sessions: SessionCache) -> None:
    fp32, fp16 = both(models_path, fp16_models, sessions, DEMO_MODEL)
    assert_close(pixels(txt2img(Run(fp16, GENERATION))), pixels(txt2img(Run(fp32, GENERATION))))


def test_img2img(models_path: Path, fp16_models: Path, sessions: SessionCache) -> None:
    fp32, fp16 = both(models_path, fp16_models, sessions, DEMO_MODEL)
    assert_close(
        pixels(img2img(Run(fp16, GENERATION), gradient(), 0.6)),
        pixels(img2img(Run(fp32, GENERATION), gradient(), 0.6)),
    )


def test_inpaint(models_path: Path, fp16_models: Path, sessions: SessionCache) -> None:
    fp32, fp16 = both(models_path, fp16_models, sessions, INPAINT_MODEL)
    generation = dataclasses.replace(GENERATION, model=INPAINT_MODEL)
    mask = gradient().convert("L")
    assert_close(
        pixels(inpaint(Run(fp16, generation), gradient(), mask)),
        pixels(inpaint(Run(fp32, generation), gradient(), mask)),
    )


def test_sdxl_txt2img_and_img2img(models_path: Path, fp16_models: Path, sessions: SessionCache) -> None:
    fp32, fp16 = both(models_path, fp16_models, sessions, DEMO_SDXL)
    generation = dataclasses.replace(GENERATION, model=DEMO_SDXL)
    assert_close(
        pixels(txt2img_sdxl(SdxlRun(fp16, generation))), pixels(txt2img_sdxl(SdxlRun(fp32, generation)))
    )
    assert_close(
        pixels(img2img(SdxlRun(fp16, generation), gradient(), 0.6)),
        pixels(img2img(SdxlRun(fp32, generation), gradient(), 0.6)),
    )

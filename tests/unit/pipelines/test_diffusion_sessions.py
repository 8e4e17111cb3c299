"""The session factory and the per-model LRU session cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipelines.models.demo import DEMO_MODELS
from pipelines.models.sessions import (
    SessionCache,
    SessionSettings,
    available_providers,
    create_session,
    model_root,
)
from tests.unit.pipelines.resident import peak_rise, status_bytes

BASE, INPAINT = (model.name for model in DEMO_MODELS)


def test_cuda_is_skipped_where_onnxruntime_lacks_it() -> None:
    assert available_providers(SessionSettings()) == ["CPUExecutionProvider"]
    assert available_providers(SessionSettings(providers=("CUDAExecutionProvider",))) == [
        "CPUExecutionProvider"
    ]


def test_create_session_applies_settings(models_path: Path) -> None:
    settings = SessionSettings(providers=("CPUExecutionProvider",), intra_op_threads=1, optimization="basic")
    session = create_session(models_path / BASE / "vae_decoder" / "model.onnx", settings)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 1
    assert [item.name for item in session.get_inputs()] == ["latent_sample"]


def test_settings_reject_unknown_optimisation_levels() -> None:
    with pytest.raises(ValueError, match="optimization"):
        SessionSettings(optimization="fast")


def test_model_root_is_the_diffusers_folder_or_the_file(models_path: Path, tmp_path: Path) -> None:
    assert (
        model_root((models_path / BASE / "unet" / "model.onnx").resolve()) == (models_path / BASE).resolve()
    )
    single = tmp_path / "upscaling-x.onnx"
    assert model_root(single) == single


def test_cache_reuses_sessions_and_evicts_whole_models(models_path: Path, tmp_path: Path) -> None:
    shutil.copyfile(models_path / BASE / "vae_decoder" / "model.onnx", tmp_path / "upscaling-demo.onnx")
    cache = SessionCache(max_models=2)
    unet = cache.get(models_path / BASE / "unet" / "model.onnx")
    assert cache.get(models_path / BASE / "unet" / "model.onnx") is unet
    cache.get(models_path / BASE / "vae_decoder" / "model.onnx")
    cache.get(models_path / INPAINT / "unet" / "model.onnx")
    assert cache.held_models(models_path) == [INPAINT, BASE]
    # Touching the base model makes the inpainting model the least recently used.
    cache.get(models_path / BASE / "unet" / "model.onnx")
    cache.get(tmp_path / "upscaling-demo.onnx")
    assert cache.held_models(models_path) == [BASE]
    assert cache.held_models(tmp_path) == ["upscaling-demo"]
    assert cache.get(models_path / BASE / "unet" / "model.onnx") is unet
    cache.clear()
    assert cache.held_models(models_path) == []
    assert cache.get(models_path / BASE / "unet" / "model.onnx") is not unet


def test_dropping_a_model_keeps_the_others_sessions(models_path: Path, tmp_path: Path) -> None:
    shutil.copyfile(models_path / BASE / "vae_decoder" / "model.onnx", tmp_path / "upscaling-demo.onnx")
    cache = SessionCache(max_models=3)
    unet = cache.get(models_path / BASE / "unet" / "model.onnx")
    upscaler = cache.get(tmp_path / "upscaling-demo.onnx")

    assert cache.drop(tmp_path / "upscaling-demo.onnx") == 1

    assert cache.get(models_path / BASE / "unet" / "model.onnx") is unet
    assert cache.get(tmp_path / "upscaling-demo.onnx") is not upscaler
    assert cache.drop(models_path / BASE) == 1 and cache.held_models(models_path) == []
    assert cache.drop(tmp_path / "never-loaded") == 0


def test_cache_needs_room_for_one_model() -> None:
    with pytest.raises(ValueError, match="max_models"):
        SessionCache(max_models=0)


def test_a_cpu_session_gives_back_a_runs_memory_when_the_run_ends(tmp_path: Path) -> None:
    """A worker caches sessions across jobs: what a run allocated must not stay with its session
    (ONNX Runtime's CPU arena kept it, so a worker held every cached session's largest run)."""
    side = 8192
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Transpose", ["x"], ["row"]),
            # An N x N intermediate (256 MiB): what one attention's scores are to a UNet.
            onnx.helper.make_node("MatMul", ["x", "row"], ["scores"]),
            onnx.helper.make_node("ReduceSum", ["scores"], ["total"], keepdims=0),
        ],
        "outer",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1])],
        [onnx.helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, [])],
    )
    path = tmp_path / "outer.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    session = create_session(path, SessionSettings(providers=("CPUExecutionProvider",)))
    ones = np.ones((side, 1), dtype=np.float32)
    session.run(None, {"x": ones[:8]})

    with peak_rise() as rise:
        before = status_bytes("VmRSS")
        [total] = session.run(None, {"x": ones})
        kept = status_bytes("VmRSS") - before

    assert total == side * side
    scores = side * side * 4
    assert rise[0] >= 0.9 * scores, "the run did not hold its scores: the graph measures nothing"
    assert kept < scores / 4, f"the session kept {kept / 2**20:.0f} MiB after its run"

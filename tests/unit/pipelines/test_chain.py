"""The chain executor's failures: a model ONNX Runtime cannot load, told apart from one that fails to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort

from pipelines.chain import ChainResult, ModelInvalid, run_chain
from pipelines.context import SessionProvider
from pipelines.models.sessions import SessionCache, SessionSettings
from pipelines.stages import STAGES
from tests.unit.pipelines.images import random_image
from tests.unit.pipelines.resolved import UPSCALE

MODEL = "upscaling-bsrgan-x4"


def run_upscale(models_path: Path, sessions: SessionProvider) -> ChainResult:
    """An upscale job's chain, as the api resolves it, on one small upload."""
    raw = {**UPSCALE, "upscale_model": MODEL, "outscale": 4}
    params = {**raw, **STAGES["upscale-bsrgan"].resolve(raw)}
    stage = {"name": "upscale", "type": "upscale-bsrgan", "params": params, "tiles": 8192, "outscale": 1}
    chain = {"stages": [stage], "sources": ["source"]}
    return run_chain(
        chain, models_path=models_path, sessions=sessions, inputs={"source": random_image((8, 8), 1)}
    )


class Raising:
    """A session provider whose every load raises ``err``."""

    def __init__(self, err: Exception) -> None:
        self.err = err

    def get(self, path: Path) -> Any:
        raise self.err


def test_a_model_file_of_random_bytes_is_model_invalid(tmp_path: Path) -> None:
    (tmp_path / f"{MODEL}.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    sessions = SessionCache(max_models=1, settings=SessionSettings(providers=("CPUExecutionProvider",)))
    with pytest.raises(
        ModelInvalid, match=r"stage 'upscale' cannot load its model: .*INVALID_PROTOBUF"
    ) as raised:
        run_upscale(tmp_path, sessions)
    assert raised.value.code == "model_invalid"
    assert isinstance(raised.value, ValueError), "a ValueError: one of the worker's permanent errors"
    assert isinstance(raised.value.__cause__, ort.InvalidProtobuf)


@pytest.mark.parametrize(
    "err",
    [
        ort.InvalidGraph("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from m.onnx failed:bad node"),
        ort.InvalidArgument(
            "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Load model from m.onnx failed:No graph"
        ),
        ort.Fail("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:external data missing"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_every_load_failure_of_onnx_runtime_is_model_invalid(tmp_path: Path, err: Exception) -> None:
    (tmp_path / f"{MODEL}.onnx").write_bytes(b"")
    with pytest.raises(ModelInvalid) as raised:
        run_upscale(tmp_path, Raising(err))
    assert raised.value.__cause__ is err


@pytest.mark.parametrize(
    "err",
    [
        ort.Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node"),
        ort.RuntimeException(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 700: illegal address"
        ),
        RuntimeError("load model"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_other_failures_leave_the_chain_as_they_are(tmp_path: Path, err: Exception) -> None:
    """What the worker may retry stays what it was: only ONNX Runtime's own load failures are final."""
    (tmp_path / f"{MODEL}.onnx").write_bytes(b"")
    with pytest.raises(type(err)) as raised:
        run_upscale(tmp_path, Raising(err))
    assert raised.value is err

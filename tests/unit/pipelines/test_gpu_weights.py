"""One copy of a model's weights for all its sessions (``SharedWeights``), checked on the CPU: the
CUDA runtime hands them to its sessions the same way, on GPU memory (test_gpu_runtime checks that)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipelines.diffusion.model import input_type
from pipelines.gpu.weights import SHARED_WEIGHT_BYTES, SharedWeights, initializer_bytes, large_initializers
from pipelines.models.layout import ONNX_FILE
from tests.unit.pipelines.conftest import DEMO_MODEL


def session(path: Path, shared: SharedWeights | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    if shared is not None:
        shared.add_to(options)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unet_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([981, 500], dtype=np.int64),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }


def test_sessions_share_one_copy_of_the_weights_and_compute_what_a_session_of_its_own_does(
    models_path: Path,
) -> None:
    """Zeroing the shared arrays changes what both sharing sessions compute, not the third session's:
    ONNX Runtime uses them in place, it does not copy them."""
    path = models_path / DEMO_MODEL / "unet" / ONNX_FILE
    shared = SharedWeights(path, lambda array: array, min_bytes=0)
    own, first, second = session(path), session(path, shared), session(path, shared)
    feeds = unet_feeds()
    feeds["timestep"] = feeds["timestep"].astype(input_type(own, "timestep", np.int64))
    expected = own.run(None, feeds)[0]
    assert len(shared.tensors) > 100
    assert shared.nbytes == sum(array.nbytes for array in shared.tensors.values())
    assert np.array_equal(first.run(None, feeds)[0], expected)

    kept = {name: array.copy() for name, array in shared.tensors.items()}
    for array in shared.tensors.values():
        array[...] = 0
    assert np.abs(first.run(None, feeds)[0] - expected).max() > 0.1
    assert np.abs(second.run(None, feeds)[0] - expected).max() > 0.1
    assert np.array_equal(own.run(None, feeds)[0], expected)

    for name, array in shared.tensors.items():
        array[...] = kept[name]
    assert np.array_equal(second.run(None, feeds)[0], expected)


@pytest.fixture
def external_graph(tmp_path: Path) -> Path:
    """``y = (x @ w)[:, :64] + b``: a 64 KiB fp32 ``w`` and a 128-byte fp16 ``b`` in an external data
    file, the slice's int64 bounds inline (ONNX's shape inference reads them)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((128, 128)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(64).astype(np.float16), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT),
            helper.make_node("Slice", ["xw", "start", "end", "axis"], ["head"]),
            helper.make_node("Add", ["head", "b32"], ["y"]),
        ],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [
            weight,
            bias,
            numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
            numpy_helper.from_array(np.array([64], dtype=np.int64), "end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / ONNX_FILE
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.pb", size_threshold=64)
    return path


def test_large_initializers_reads_external_data_and_leaves_the_small_ones(external_graph: Path) -> None:
    model = onnx.load(str(external_graph), load_external_data=False)
    sizes = {tensor.name: initializer_bytes(tensor) for tensor in model.graph.initializer}
    assert sizes == {"w": 128 * 128 * 4, "b": 64 * 2, "start": 8, "end": 8, "axis": 8}
    assert sizes["w"] >= SHARED_WEIGHT_BYTES > sizes["b"]

    loaded = dict(large_initializers(external_graph))
    assert list(loaded) == ["w"]
    expected = numpy_helper.to_array(
        next(t for t in onnx.load(str(external_graph)).graph.initializer if t.name == "w")
    )
    assert np.array_equal(loaded["w"], expected)
    assert set(dict(large_initializers(external_graph, min_bytes=100))) == {"w", "b"}


def test_a_graph_with_shared_weights_of_several_types_runs_as_it_does_alone(external_graph: Path) -> None:
    """An fp16 weight among fp32 ones, and int64 constants that ONNX Runtime folds into the graph."""
    shared = SharedWeights(external_graph, lambda array: array, min_bytes=0)
    assert {str(array.dtype) for array in shared.tensors.values()} == {"float32", "float16", "int64"}
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    expected = session(external_graph).run(None, {"x": x})[0]
    assert np.array_equal(session(external_graph, shared).run(None, {"x": x})[0], expected)
    shared.tensors["w"][...] = 0
    assert np.allclose(
        session(external_graph, shared).run(None, {"x": x})[0], shared.tensors["b"].astype(np.float32)
    )

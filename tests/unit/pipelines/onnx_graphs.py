"""What the GPU-recipe tests read of an exported graph (its operators, input types and time
embeddings), and a CPU stand-in for a fused fp16 folder's graphs."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipelines.gpu.optimize import classic_attention
from pipelines.models.convert import export_text_encoder, export_unet
from pipelines.models.layout import EXTERNAL_DATA_FILE, ONNX_FILE

#: What an fp16 UNet takes: fp16, but for the timestep, which keeps fp32 for its sinusoidal embedding.
FP16_UNET_INPUTS = {
    "sample": onnx.TensorProto.FLOAT16,
    "timestep": onnx.TensorProto.FLOAT,
    "encoder_hidden_states": onnx.TensorProto.FLOAT16,
}


def export_for_gpu(unet: Any, path: Path) -> Path:
    """``unet`` exported in fp32 with classic attention to ``path``, as ``convert --optimize gpu`` does."""
    export_unet(classic_attention(unet.eval()), path, 17)
    return path


def export_text_encoder_for_gpu(text_encoder: Any, path: Path) -> Path:
    """An SD 1.x ``text_encoder`` exported in fp32 with eager attention to ``path``, as
    ``convert --optimize gpu`` does."""
    export_text_encoder(classic_attention(text_encoder.eval()), path, 17, clip_skip=True)
    return path


def initializer_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of the graph at ``path``, by name."""
    graph = onnx.load(str(path)).graph
    return {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}


def with_initializers(src: Path, dest: Path, values: Mapping[str, np.ndarray]) -> Path:
    """A copy of the graph at ``src`` at ``dest`` whose initializers named in ``values`` hold those."""
    model = onnx.load(str(src), load_external_data=True)
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(onnx.numpy_helper.from_array(values[tensor.name], tensor.name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dest))  # demo graphs: small enough inline
    return dest


def op_counts(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def input_types(model: onnx.ModelProto) -> dict[str, int]:
    """Each graph input's element type (``onnx.TensorProto.FLOAT``, ...), by name."""
    return {item.name: item.type.tensor_type.elem_type for item in model.graph.input}


def sinusoid_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the graph's Sin and Cos nodes: its timestep (and SDXL size) embeddings."""
    return [node.name for node in model.graph.node if node.op_type in ("Sin", "Cos")]


#: Inputs a fused fp16 graph keeps in fp32 (``pipelines.gpu.optimize``): its sinusoidal embeddings.
FP32_INPUTS = ("timestep", "time_ids")


def fp16_io_copy(src: Path, dest: Path) -> Path:
    """A copy of model folder ``src`` whose graphs take and give fp16 where a fused fp16 folder's do
    (every float input but ``FP32_INPUTS``, every float output), cast to and from fp32 inside.

    The fused graphs run only on CUDA; this copy runs anywhere, so the CPU tests can check that
    every loop feeds and reads such graphs by their declared types.
    """
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(ONNX_FILE, EXTERNAL_DATA_FILE))
    for path in sorted(src.glob(f"*/{ONNX_FILE}")):
        model = onnx.load(str(path), load_external_data=True)
        graph, casts = model.graph, []
        for item in graph.input:
            if item.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or item.name in FP32_INPUTS:
                continue
            inner = f"{item.name}.fp32"
            for node in graph.node:
                node.input[:] = [inner if name == item.name else name for name in node.input]
            casts.append(onnx.helper.make_node("Cast", [item.name], [inner], to=onnx.TensorProto.FLOAT))
            item.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        for item in graph.output:
            if item.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                continue
            inner = f"{item.name}.fp32"
            for node in graph.node:  # an output may feed later nodes too (a text encoder's layers)
                node.output[:] = [inner if name == item.name else name for name in node.output]
                node.input[:] = [inner if name == item.name else name for name in node.input]
            graph.node.append(
                onnx.helper.make_node("Cast", [inner], [item.name], to=onnx.TensorProto.FLOAT16)
            )
            item.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        for cast in reversed(casts):
            graph.node.insert(0, cast)
        onnx.save_model(model, str(dest / path.relative_to(src)))  # demo graphs: small enough inline
    return dest

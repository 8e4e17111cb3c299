"""What the GPU-recipe tests read of an exported graph: its operators, input types and time embeddings."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from pipelines.gpu.optimize import classic_attention
from pipelines.models.convert import export_unet

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


def op_counts(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def input_types(model: onnx.ModelProto) -> dict[str, int]:
    """Each graph input's element type (``onnx.TensorProto.FLOAT``, ...), by name."""
    return {item.name: item.type.tensor_type.elem_type for item in model.graph.input}


def sinusoid_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the graph's Sin and Cos nodes: its timestep (and SDXL size) embeddings."""
    return [node.name for node in model.graph.node if node.op_type in ("Sin", "Cos")]

"""The GPU conversion recipe on the tiny demo UNet: which operators it fuses, and that fusing keeps
the numbers (checked on the CPU with the fusions that have CPU kernels)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper, numpy_helper

from pipelines.gpu.optimize import (
    CUDA_ONLY_FUSIONS,
    classic_attention,
    fuse_graph,
    fusion_options,
    optimize_component,
    optimize_folder,
    unsupported_fusions,
)
from pipelines.models.convert import export_vae_decoder
from pipelines.models.demo import demo_unet, demo_vae
from pipelines.models.layout import GPU_MARKER, ONNX_FILE
from tests.unit.pipelines import onnx_graphs


@pytest.fixture(scope="module")
def exported_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo UNet exported in fp32 with classic attention, as ``convert --optimize gpu`` does."""
    return onnx_graphs.export_for_gpu(demo_unet(), tmp_path_factory.mktemp("fusion") / "unet" / ONNX_FILE)


@pytest.fixture(scope="module")
def gpu_fused(exported_unet: Path) -> tuple[Path, dict[str, int]]:
    """The GPU recipe applied to the demo UNet: its path and the fused-operator counts."""
    path = exported_unet.parent.parent / "fp16" / ONNX_FILE
    return path, optimize_component(exported_unet, path, "unet", fp16=True)


def unet_feeds(dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(dtype),
        "timestep": np.array([981.0, 500.5], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(dtype),
    }


def run_cpu(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0], dtype=np.float32)


def test_the_gpu_recipe_fuses_attention_norms_and_convolutions(
    gpu_fused: tuple[Path, dict[str, int]],
) -> None:
    """Every attention becomes one MultiHeadAttention (self and cross: 2 per transformer block, 4 blocks).

    The demo's GEGLU (256 wide) stays unfused: CUDA's BiasSplitGelu takes SD's widths only (below).
    """
    fused, counts = gpu_fused
    assert counts["MultiHeadAttention"] == 8
    assert counts["SkipLayerNormalization"] == 8
    assert "BiasSplitGelu" not in counts
    assert counts["GroupNorm"] + counts["SkipGroupNorm"] == 21
    assert counts["NhwcConv"] == 33
    ops = onnx_graphs.op_counts(fused)
    assert ops["Softmax"] == 0 and ops["InstanceNormalization"] == 0
    assert ops == Counter({**ops, **counts}), "the reported counts are the graph's"


def test_geglu_is_fused_only_at_widths_the_cuda_kernel_takes(tmp_path: Path) -> None:
    """A transformer of 320 channels (SD's first block; GEGLU 2560 wide) gets BiasSplitGelu; the
    demo's 32 channels (256) would fail CUDA's kernel at the first run, so it keeps Mul and Erf."""
    exported = onnx_graphs.export_for_gpu(
        demo_unet(
            block_out_channels=(320, 320),
            norm_num_groups=32,
            attention_head_dim=8,
            cross_attention_dim=32,
            layers_per_block=1,
        ),
        tmp_path / "wide" / ONNX_FILE,
    )
    graph = fuse_graph(lambda: str(exported), "unet", fp16=True, cuda=True).model.graph
    # One per transformer: one down, one in the middle, two up.
    assert Counter(node.op_type for node in graph.node)["BiasSplitGelu"] == 4
    assert unsupported_fusions(graph) == set()


@pytest.mark.parametrize(
    ("op_type", "width", "refused"),
    [
        ("BiasSplitGelu", 2560, set()),
        ("BiasSplitGelu", 256, {"enable_bias_splitgelu"}),
        ("BiasAdd", 640, set()),
        ("BiasAdd", 384, {"enable_bias_add"}),
        ("Add", 384, set()),
    ],
)
def test_a_fused_operator_outside_its_cuda_widths_is_refused(
    op_type: str, width: int, refused: set[str]
) -> None:
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x", "bias"], ["y"], domain="" if op_type == "Add" else "com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, width])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(width, dtype=np.float32), "bias")],
    )
    assert unsupported_fusions(graph) == refused


def test_the_fp16_graph_keeps_timesteps_and_their_embedding_in_fp32(
    gpu_fused: tuple[Path, dict[str, int]],
) -> None:
    model = onnx.load(str(gpu_fused[0]))
    assert onnx_graphs.input_types(model) == onnx_graphs.FP16_UNET_INPUTS
    sines = onnx_graphs.sinusoid_nodes(model)
    assert len(sines) == 2 and all(name.startswith("/model/time_proj/") for name in sines)


def test_fusion_keeps_the_unets_numbers(exported_unet: Path, tmp_path: Path) -> None:
    """fp32 fused (CPU kernels only: attention and layer norms) against the plain export: 1e-4 relative.

    Without packed QKV/KV (fp16 only) the fusion takes the 4 self-attentions; cross-attention stays
    as MatMul/Softmax, which the plain export checks anyway.
    """
    fused = tmp_path / ONNX_FILE
    counts = optimize_component(exported_unet, fused, "unet", fp16=False, cuda=False)
    assert counts["MultiHeadAttention"] == 4 and counts["SkipLayerNormalization"] == 8
    reference = run_cpu(exported_unet, unet_feeds())
    result = run_cpu(fused, unet_feeds())
    assert np.linalg.norm(result - reference) / np.linalg.norm(reference) < 1e-4


def test_cpu_options_leave_out_exactly_the_cuda_only_fusions() -> None:
    gpu, cpu = fusion_options("unet", fp16=True, cuda=True), fusion_options("unet", fp16=True, cuda=False)
    assert all(getattr(gpu, name) for name in CUDA_ONLY_FUSIONS)
    assert not any(getattr(cpu, name) for name in CUDA_ONLY_FUSIONS)
    assert (
        cpu.enable_attention
        and gpu.enable_packed_qkv
        and not fusion_options("unet", fp16=False, cuda=True).enable_packed_qkv
    )


@pytest.mark.parametrize(
    ("pipeline", "force_upcast", "upcast"),
    [
        ("StableDiffusionXLPipeline", True, True),
        ("StableDiffusionXLPipeline", False, False),
        ("OnnxStableDiffusionUpscalePipeline", True, True),
        ("OnnxStableDiffusionPipeline", True, False),
    ],
)
def test_a_vae_whose_config_asks_for_fp32_keeps_it_in_an_fp16_folder_where_diffusers_would(
    tmp_path: Path, pipeline: str, force_upcast: bool, upcast: bool
) -> None:
    """SDXL's VAE overflows fp16 on real weights; diffusers upcasts it, and so does the GPU folder.
    diffusers' SD 1.x/2.x pipelines ignore the flag, which recent configs set by default."""
    vae = classic_attention(demo_vae())
    folder = tmp_path / "model"
    export_vae_decoder(vae, folder / "vae_decoder" / ONNX_FILE, 17)
    vae.save_config(folder / "vae_decoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    config = folder / "vae_decoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "force_upcast": force_upcast}))
    plain = tmp_path / "plain" / ONNX_FILE
    shutil.copytree(folder / "vae_decoder", plain.parent)

    optimize_folder(folder)

    decoder = onnx.load(str(folder / "vae_decoder" / ONNX_FILE))
    expected = onnx.TensorProto.FLOAT if upcast else onnx.TensorProto.FLOAT16
    assert onnx_graphs.input_types(decoder) == {"latent_sample": expected}
    assert decoder.graph.output[0].type.tensor_type.elem_type == expected
    marker = json.loads((folder / GPU_MARKER).read_text())
    assert marker["fp32_components"] == (["vae_decoder"] if upcast else [])
    if upcast:  # fp32 with CPU kernels only: it runs here, with the plain export's numbers
        latents = {"latent_sample": np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)}
        reference = run_cpu(plain, latents)
        assert np.linalg.norm(run_cpu(folder / "vae_decoder" / ONNX_FILE, latents) - reference) < (
            1e-5 * np.linalg.norm(reference)
        )

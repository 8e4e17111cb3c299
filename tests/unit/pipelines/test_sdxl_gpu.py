"""The SDXL GPU recipe on the tiny demo SDXL UNet, and the full-size SDXL configs the benchmark builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

from bench.architectures import SDXL_TEXT_2, SDXL_UNET
from pipelines.gpu.optimize import optimize_component
from pipelines.models.demo import demo_sdxl_unet
from pipelines.models.layout import ONNX_FILE
from tests.unit.pipelines import onnx_graphs


@pytest.fixture(scope="module")
def fused_sdxl_unet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The demo SDXL UNet exported with classic attention, fused and converted to fp16."""
    folder = tmp_path_factory.mktemp("sdxl-fusion")
    exported = onnx_graphs.export_for_gpu(demo_sdxl_unet(), folder / "unet" / ONNX_FILE)
    fused = folder / "fp16" / ONNX_FILE
    return fused, optimize_component(exported, fused, "unet", fp16=True)


def test_every_sdxl_attention_is_fused(fused_sdxl_unet: tuple[Path, dict[str, int]]) -> None:
    """Self and cross attention of each of the 8 transformer layers (2 down, 2 x 3 up) fuse."""
    fused, counts = fused_sdxl_unet
    assert counts["MultiHeadAttention"] == 16
    ops = onnx_graphs.op_counts(fused)
    assert ops["Softmax"] == 0 and ops["InstanceNormalization"] == 0


def test_sdxl_size_conditioning_stays_fp32(fused_sdxl_unet: tuple[Path, dict[str, int]]) -> None:
    """``time_ids`` (sizes up to 1024+) and their sinusoidal embedding keep fp32 in the fp16 graph."""
    model = onnx.load(str(fused_sdxl_unet[0]))
    assert onnx_graphs.input_types(model) == {
        **onnx_graphs.FP16_UNET_INPUTS,
        "text_embeds": onnx.TensorProto.FLOAT16,
        "time_ids": onnx.TensorProto.FLOAT,
    }
    sines = onnx_graphs.sinusoid_nodes(model)
    assert len(sines) == 4 and all(
        name.startswith(("/model/time_proj/", "/model/add_time_proj/")) for name in sines
    )


def test_full_size_sdxl_configs_have_sdxl_base_parameter_counts() -> None:
    """Built on torch's meta device (no memory): SDXL base's UNet and OpenCLIP bigG, to the parameter."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        # diffusers' lazy imports leave the class untyped for mypy.
        unet: Any = UNet2DConditionModel(**SDXL_UNET)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2))
    assert sum(item.numel() for item in unet.parameters()) == 2_567_463_684
    assert sum(item.numel() for item in text_encoder_2.parameters()) == 694_659_840


def test_the_benchmarks_pytorch_sdxl_helpers_run_diffusers_on_the_demo_sdxl(models_path: Path) -> None:
    """``bench.gpu``'s PyTorch side (shared with ``bench.gpu_prebuilt``), run on the CPU with tiny weights."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from bench.gpu import Timer, pytorch_sdxl_image, time_pytorch_sdxl_unet
    from pipelines.models.demo import DEMO_SDXL, torch_source_path

    pipe = StableDiffusionXLPipeline.from_pretrained(torch_source_path(models_path, DEMO_SDXL))
    pipe.set_progress_bar_config(disable=True)
    result, call = time_pytorch_sdxl_unet(pipe, "cpu", torch.float32, 64, Timer("cpu"))
    assert result["flops_unet_batch2"] > 0 and len(result["unet_batch2"]) > 0
    assert tuple(call().shape) == (2, 4, 8, 8)
    assert pytorch_sdxl_image(pipe, 64, 2).size == (64, 64)

"""ONNX Runtime's Stable Diffusion fusions and fp16 conversion of an exported model folder.

The recipe that measured fastest on an H200 (``docs/gpu.md``): export in fp32 with the classic
attention formulation (diffusers' ``AttnProcessor``, transformers' ``eager``; the SDPA export
defeats the attention fusion), fuse with ``onnxruntime.transformers.optimizer`` (MultiHeadAttention,
GroupNorm, SkipGroupNorm, NhwcConv, BiasSplitGelu, SkipLayerNormalization...), then convert to
fp16. Several fused kernels exist only for CUDA, so an optimized folder is for CUDA workers; the
plain export stays the CPU path.

An SDXL or x4 upscaler VAE whose config sets ``force_upcast`` stays fp32, with only the fusions
that have CPU kernels: SDXL's activations overflow fp16 on real weights (black or NaN images), which
is why diffusers runs it in fp32 too. A VAE trained to stay in range (``madebyollin/sdxl-vae-fp16-fix``,
``force_upcast: false``) is converted to fp16 like the rest, as is every SD 1.x/2.x VAE: diffusers
decodes those in fp16 whatever their config says (``honours_force_upcast``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.models.layout import EXTERNAL_DATA_FILE, GPU_MARKER, ONNX_FILE

logger = logging.getLogger(__name__)

#: Component folder -> model type of ONNX Runtime's optimizer.
COMPONENT_TYPES: Mapping[str, str] = {
    "unet": "unet",
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "vae_encoder": "vae",
    "vae_decoder": "vae",
}
#: Fusions whose operators ONNX Runtime implements for CUDA only.
CUDA_ONLY_FUSIONS = (
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_nhwc_conv",
    "enable_bias_splitgelu",
    "enable_bias_add",
)
#: Fused operators whose CUDA kernels take only some widths (the length of their bias input), with
#: the fusion option that makes them. ONNX Runtime 1.31's BiasSplitGelu takes the GEGLU projection
#: of SD's and SDXL's transformers (8x their 320-1280 channels: "hidden size should be 2560, 5120,
#: 6144, 10240 or 12288"), BiasAdd their channels ("Number of channels should be 320, 640 or 1280").
#: A UNet of other widths keeps those patterns unfused, or its fused graph fails at its first run.
CUDA_WIDTHS: Mapping[str, tuple[str, frozenset[int]]] = {
    "BiasSplitGelu": ("enable_bias_splitgelu", frozenset({2560, 5120, 6144, 10240, 12288})),
    "BiasAdd": ("enable_bias_add", frozenset({320, 640, 1280})),
}
#: Inputs that stay fp32 in an fp16 graph: Karras-style schedulers step on fractional timesteps,
#: which fp16 would round (0.5 apart near 1000).
FP32_INPUTS = ("timestep", "time_ids")
#: Nodes that stay fp32 in an fp16 graph: the sinusoidal embeddings of the timestep (and SDXL's
#: size conditioning) take sin/cos of arguments up to ~1000, whose phase fp16 loses; diffusers
#: computes them in fp32 as well.
FP32_NODE_PREFIXES = ("/model/time_proj/", "/model/add_time_proj/")
#: Protobuf's limit: larger models keep their weights in ``EXTERNAL_DATA_FILE``.
PROTOBUF_LIMIT = 2**31 - 1


def classic_attention(module: Any) -> Any:
    """Switch a diffusers or transformers module to the attention formulation the fusions match."""
    if hasattr(module, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor

        module.set_attn_processor(AttnProcessor())
    elif hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation("eager")
    else:
        raise TypeError(f"cannot choose the attention of a {type(module).__name__}")
    return module


def fusion_options(model_type: str, *, fp16: bool, cuda: bool) -> Any:
    """ONNX Runtime's fusion options for ``model_type``, as its Stable Diffusion script sets them.

    Packed QKV/KV weights only pay off (and are only implemented) in fp16; ``cuda=False`` leaves
    out the fusions whose operators have no CPU kernel, for a graph that runs on the CPU.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    if model_type == "unet":
        options.enable_packed_qkv = fp16
        options.enable_packed_kv = fp16
    if model_type == "vae":
        # The VAE's one attention block does not match the fusion's pattern in diffusers' classic
        # attention (the fusion fails reading its head count); its cost is small next to the convs.
        options.enable_attention = False
    if not cuda:
        for name in CUDA_ONLY_FUSIONS:
            setattr(options, name, False)
    return options


def fuse_graph(load: Callable[[], Any], model_type: str, *, fp16: bool, cuda: bool) -> Any:
    """ONNX Runtime's optimizer with ``fusion_options`` on the graph ``load`` returns (a path or a
    ``ModelProto``); returns its ``OnnxModel``. Where it fused an operator at a width its CUDA kernel
    does not take (``CUDA_WIDTHS``), it fuses a fresh copy again without that fusion."""
    from onnxruntime.transformers.optimizer import optimize_model

    options = fusion_options(model_type, fp16=fp16, cuda=cuda)

    def fuse() -> Any:
        return optimize_model(
            load(), model_type=model_type, opt_level=0, optimization_options=options, use_gpu=True
        )

    model = fuse()
    refused = unsupported_fusions(model.model.graph)
    if refused:
        logger.info("left unfused for CUDA's kernels, widths outside theirs: %s", sorted(refused))
        for option in refused:
            setattr(options, option, False)
        model = fuse()
    return model


def unsupported_fusions(graph: Any) -> set[str]:
    """The fusion options of ``CUDA_WIDTHS`` whose operators ``graph`` holds at a width the CUDA
    kernel does not take (a bias that is not a weight counts as such)."""
    widths = {tensor.name: tensor.dims[-1] for tensor in graph.initializer if tensor.dims}
    refused = set()
    for node in graph.node:
        if node.op_type in CUDA_WIDTHS:
            option, supported = CUDA_WIDTHS[node.op_type]
            if widths.get(node.input[1], -1) not in supported:
                refused.add(option)
    return refused


def optimize_component(
    src: Path, dest: Path, model_type: str, *, fp16: bool = True, cuda: bool = True
) -> dict[str, int]:
    """Fuse the ONNX model ``src`` (and convert it to fp16) into ``dest``; returns fused-op counts."""
    model = fuse_graph(lambda: str(src), model_type, fp16=fp16, cuda=cuda)
    if fp16:
        convert_to_fp16(model)
    counts: dict[str, int] = {
        name: count for name, count in model.get_fused_operator_statistics().items() if count
    }
    model.topological_sort()
    save_model(model.model, dest)
    return counts


def convert_to_fp16(model: Any) -> None:
    """Convert a fused model (ONNX Runtime's ``OnnxModel``) to fp16 in place, but for the inputs
    and nodes that must stay fp32 (``FP32_INPUTS``, ``FP32_NODE_PREFIXES``)."""
    inputs = {item.name for item in model.model.graph.input}
    kept = [name for name in FP32_INPUTS if name in inputs]
    blocked = [node.name for node in model.model.graph.node if node.name.startswith(FP32_NODE_PREFIXES)]
    model.convert_float_to_float16(keep_io_types=kept, node_block_list=blocked)


def save_model(model: Any, path: Path) -> None:
    """Save ``model`` to ``path``, its weights in ``EXTERNAL_DATA_FILE`` beside it when over 2 GB."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / EXTERNAL_DATA_FILE).unlink(missing_ok=True)
    # ByteSize() itself fails on protos over the limit: count the weights instead.
    large = sum(len(tensor.raw_data) for tensor in model.graph.initializer) > PROTOBUF_LIMIT // 2
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
    )


def keeps_fp32(folder: Path, component: str) -> bool:
    """Whether ``component`` of an fp16 folder stays fp32: a VAE whose config sets ``force_upcast``,
    in a model whose diffusers pipeline honours it (``honours_force_upcast``)."""
    config = folder / component / "config.json"
    if COMPONENT_TYPES.get(component) != "vae" or not config.is_file() or not honours_force_upcast(folder):
        return False
    return bool(json.loads(config.read_text()).get("force_upcast", False))


def honours_force_upcast(folder: Path) -> bool:
    """Whether the model in ``folder`` decodes in fp32 where its VAE config sets ``force_upcast``.

    diffusers' SDXL pipelines and the x4 upscaler's do; its SD 1.x/2.x pipelines decode in fp16
    whatever the config says, and a config written by a recent diffusers (a single-file
    conversion's, say) sets the flag by default, so for those models it says nothing about range.
    The class is ``model_index.json``'s, as the converter writes it.
    """
    try:
        name = str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return False
    return "XL" in name or "Upscale" in name


def _optimize_in_place(folder: Path, component: str, fp16: bool) -> tuple[str, dict[str, int], float]:
    """Optimize one component folder, replacing its model; a process-pool task."""
    started = time.monotonic()
    src = folder / component / ONNX_FILE
    staged = folder / f"{component}.optimized" / ONNX_FILE
    upcast = fp16 and keeps_fp32(folder, component)
    counts = optimize_component(
        src, staged, COMPONENT_TYPES[component], fp16=fp16 and not upcast, cuda=not upcast
    )
    for item in (folder / component).iterdir():
        if item.name in (ONNX_FILE, EXTERNAL_DATA_FILE):
            item.unlink()
    for item in staged.parent.iterdir():
        item.rename(folder / component / item.name)
    staged.parent.rmdir()
    return component, counts, time.monotonic() - started


def optimize_folder(
    folder: Path,
    *,
    fp16: bool = True,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Optimize every component of an exported model folder in place and record it in ``gpu.json``.

    The components must have been exported with ``classic_attention``. ``workers > 1`` fuses
    components in parallel processes (the UNet is the long one: minutes at full size).
    """
    report = progress or (lambda line: None)
    components = [name for name in COMPONENT_TYPES if (folder / name / ONNX_FILE).is_file()]
    results: dict[str, dict[str, int]] = {}
    if workers > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(components))) as pool:
            futures = [pool.submit(_optimize_in_place, folder, name, fp16) for name in components]
            done = [future.result() for future in futures]
    else:
        done = [_optimize_in_place(folder, name, fp16) for name in components]
    for component, counts, seconds in done:
        report(f"{folder.name}: optimized {component} in {seconds:.0f} s: {counts}")
        results[component] = counts
    write_gpu_marker(folder, results, fp16=fp16)
    return results


def write_gpu_marker(folder: Path, fused: Mapping[str, Mapping[str, int]], *, fp16: bool) -> dict[str, Any]:
    """Record in ``folder``'s ``gpu.json`` what its components were fused into and their precision
    (in an fp16 folder, the components that stay fp32 by ``keeps_fp32``); returns the record."""
    marker: dict[str, Any] = {"precision": "fp16" if fp16 else "fp32", "fused": dict(fused)}
    if fp16:
        marker["fp32_components"] = [name for name in fused if keeps_fp32(folder, name)]
    (folder / GPU_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker

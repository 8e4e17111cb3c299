"""SDXL on a GPU from a model folder converted elsewhere: the graphs travel, the weights do not.

Full-size SDXL's conversion (fp32 export of 10 GB, then the UNet's fusion) takes longer than a GPU
lease allows, and the converted folder (6.5 GB of fp16 weights) is too large to send to the GPU
machine. Speed does not depend on weight values, so:

1. Here (CPU): export the random-weight SDXL of ``architectures.write_checkpoint`` for the GPU
   recipe (``convert_diffusers_folder(src, dest, optimize="gpu")`` up to its fusion step), then
   ``fuse EXPORTED GRAPHS``: ``pipelines.gpu.optimize``'s fusions and fp16 conversion with the
   weights left on disk (read only where a fusion needs them), written as graphs whose weights are
   external and absent (a few MB). The whole-weight fusion of the 10 GB fp32 UNet needs more memory
   than 23 GB (it was killed), and its symbolic shape inference copies the model. ``strip`` does
   the same for a folder already converted with its weights.
2. On the GPU machine: ``run --folder GRAPHS``: fills each external weight file with new random
   values (uniform, +-1/sqrt(fan-in); 1-D tensors 1.0), builds diffusers' SDXL pipeline in fp16 on
   the GPU from the same configurations with seeded random weights, and times both: the UNet call
   at batch 2 and a 30-step image, text to PNG bytes.

The fused graph's weights are not PyTorch's weights (they are regenerated, not copied), so this
measures speed only: outputs are not compared. ``--src`` takes PyTorch's weights from a diffusers
folder instead of building them (the CPU dry run uses it with ``tiny-sdxl``).

    python -m bench.gpu_prebuilt fuse EXPORTED_FOLDER GRAPHS
    python -m bench.gpu_prebuilt strip MODEL_FOLDER GRAPHS
    python -m bench.gpu_prebuilt run --folder GRAPHS --out OUT [--device cpu --src SRC]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gpu import (
    PEAK_TFLOPS,
    Timer,
    images_per_second,
    memory_line,
    pixel_difference,
    profile_kernels,
    pytorch_sdxl_image,
    sdxl_unet_inputs,
    summary,
    time_previews,
    time_pytorch_sdxl_unet,
    time_sdxl_images,
    warm_memory,
)
from pipelines.models.layout import EXTERNAL_DATA_FILE, ONNX_FILE

logger = logging.getLogger(__name__)

#: Written into the stripped folder: the size of each weight file left behind.
MANIFEST = "stripped.json"
#: Jobs per batch whose images/s ``time_sdxl_batches`` measures.
SDXL_BATCH_JOBS = (1, 2)
#: Tensors under this many bytes stay inside the graph (shape constants and the like).
EXTERNAL_THRESHOLD = 1024


def strip(folder: Path, dest: Path) -> dict[str, int]:
    """Copy the converted model ``folder`` to ``dest`` without weights; returns the sizes left out."""
    import onnx

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(ONNX_FILE, EXTERNAL_DATA_FILE))
    sizes: dict[str, int] = {}
    for model_path in sorted(folder.glob(f"*/{ONNX_FILE}")):
        component = model_path.parent.name
        model = onnx.load(str(model_path), load_external_data=True)
        target = dest / component / ONNX_FILE
        onnx.save_model(
            model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_FILE,
            size_threshold=EXTERNAL_THRESHOLD,
        )
        del model
        weights = target.parent / EXTERNAL_DATA_FILE
        sizes[component] = weights.stat().st_size if weights.exists() else 0
        weights.unlink(missing_ok=True)
        logger.info(
            "%s: graph %d bytes, weights %d bytes left out",
            component,
            target.stat().st_size,
            sizes[component],
        )
    (dest / MANIFEST).write_text(json.dumps(sizes, indent=2) + "\n")
    return sizes


#: Bytes per element of the tensor types a weightless graph may hold externally.
ITEM_BYTES = {1: 4, 10: 2, 7: 8, 6: 4}  # FLOAT, FLOAT16, INT64, INT32


def relayout(model: Any) -> int:
    """Point every large or external initializer at ``EXTERNAL_DATA_FILE``, without data; returns its size."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    offset = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        if not (uses_external_data(tensor) or len(tensor.raw_data) >= EXTERNAL_THRESHOLD):
            continue
        if tensor.data_type not in ITEM_BYTES:
            raise ValueError(f"{tensor.name}: tensor type {tensor.data_type} cannot be regenerated")
        size = count * ITEM_BYTES[tensor.data_type]
        for name in ("raw_data", "float_data", "int32_data", "int64_data"):
            tensor.ClearField(name)
        offset = (offset + 4095) // 4096 * 4096
        del tensor.external_data[:]
        for key, value in (("location", EXTERNAL_DATA_FILE), ("offset", str(offset)), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        offset += size
    return offset


def fuse_weightless(src: Path, dest: Path, component: str) -> tuple[dict[str, int], int]:
    """``optimize_component`` on ``src/component`` without loading its external weights."""
    import os

    import onnx
    import onnxruntime.transformers.float16 as float16
    from onnx import helper

    from pipelines.gpu.optimize import COMPONENT_TYPES, convert_to_fp16, fuse_graph, keeps_fp32

    def value_info(tensor: Any) -> Any:
        # The stock one reads the tensor's data, which is not loaded (and not yet converted).
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    # ONNX Runtime's transformers folder also imports the module under its bare name.
    for module in (float16, sys.modules.get("float16")):
        if module is not None:
            setattr(module, "make_value_info_from_tensor", value_info)  # noqa: B010
    model_type = COMPONENT_TYPES[component]
    fp16 = not keeps_fp32(src, component)  # as optimize_folder decides (an upcast VAE stays fp32)
    cwd = os.getcwd()
    # Fusions that need weight values (packing QKV, transposing convolutions) read them relative to here.
    os.chdir(src / component)
    try:
        fused = fuse_graph(
            lambda: onnx.load(ONNX_FILE, load_external_data=False), model_type, fp16=fp16, cuda=fp16
        )
        if fp16:
            convert_to_fp16(fused)
        counts = {name: count for name, count in fused.get_fused_operator_statistics().items() if count}
        fused.topological_sort()
    finally:
        os.chdir(cwd)
    size = relayout(fused.model)
    (dest / component).mkdir(parents=True, exist_ok=True)
    onnx.save_model(fused.model, str(dest / component / ONNX_FILE))
    return counts, size


def fuse(src: Path, dest: Path, components: list[str] | None = None) -> dict[str, Any]:
    """Fuse an exported folder ``src`` into the weightless folder ``dest`` (graphs and small files)."""
    from pipelines.gpu.optimize import COMPONENT_TYPES, write_gpu_marker

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(ONNX_FILE, EXTERNAL_DATA_FILE))
    fused: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for component in COMPONENT_TYPES:
        if (src / component / ONNX_FILE).is_file() and (not components or component in components):
            started = time.monotonic()
            fused[component], sizes[component] = fuse_weightless(src, dest, component)
            logger.info(
                "%s: fused in %.0f s, %.2f GB of weights left out: %s",
                component,
                time.monotonic() - started,
                sizes[component] / 1e9,
                fused[component],
            )
    (dest / MANIFEST).write_text(json.dumps(sizes, indent=2) + "\n")
    # ``dest`` has the components' configs (copied above), which ``keeps_fp32`` reads.
    return write_gpu_marker(dest, fused, fp16=True)


def restore(folder: Path, seed: int = 0) -> dict[str, float]:
    """Write random weights for every external tensor of every component of ``folder``."""
    import numpy as np
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    rng = np.random.default_rng(seed)
    base = rng.uniform(-1.0, 1.0, 1 << 24).astype(np.float32)
    seconds: dict[str, float] = {}
    for model_path in sorted(folder.glob(f"*/{ONNX_FILE}")):
        started = time.monotonic()
        model = onnx.load(str(model_path), load_external_data=False)
        weights = model_path.parent / EXTERNAL_DATA_FILE
        tensors = [item for item in model.graph.initializer if uses_external_data(item)]
        if not tensors:
            continue
        with weights.open("wb") as handle:
            for tensor in tensors:
                info = ExternalDataInfo(tensor)
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
                if np.issubdtype(dtype, np.floating):
                    if len(tensor.dims) <= 1:
                        values = np.ones(count, dtype=dtype)
                    else:
                        fan = max(1, count // max(tensor.dims))
                        start = int(rng.integers(0, base.size))
                        chunk = (
                            base[start : start + count]
                            if start + count <= base.size
                            else np.resize(base, count)
                        )
                        values = (chunk / np.sqrt(fan)).astype(dtype)
                else:
                    logger.warning("%s: %s is %s, written as zeros", model_path, tensor.name, dtype)
                    values = np.zeros(count, dtype=dtype)
                data = values.tobytes()
                if info.length and info.length != len(data):
                    raise ValueError(f"{tensor.name}: {len(data)} bytes, the graph says {info.length}")
                handle.seek(int(info.offset or 0))
                handle.write(data)
        seconds[model_path.parent.name] = time.monotonic() - started
        logger.info(
            "%s: %d tensors, %.1f GB in %.0f s",
            model_path.parent.name,
            len(tensors),
            weights.stat().st_size / 1e9,
            seconds[model_path.parent.name],
        )
    return seconds


def build_pytorch_sdxl(folder: Path, architecture: str, device: str, dtype: Any, src: Path | None) -> Any:
    """diffusers' StableDiffusionXLPipeline: from ``src``, or built from the architecture's configs."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    if src is not None:
        pipe = StableDiffusionXLPipeline.from_pretrained(src, torch_dtype=dtype, add_watermarker=False)
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        from bench.architectures import SDXL_TEXT, SDXL_TEXT_2, SDXL_UNET, SDXL_VAE
        from pipelines.models.demo import BOS_TOKEN, EOS_TOKEN

        if architecture != "sdxl":
            raise ValueError("building in memory is for --architecture sdxl; give --src otherwise")
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
        bos, eos = tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN])
        ids = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
        torch.manual_seed(0)
        with torch.device(device):
            modules: dict[str, Any] = {
                "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_TEXT, **ids)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2, **ids)),
                "unet": UNet2DConditionModel(**SDXL_UNET),
                "vae": AutoencoderKL(**SDXL_VAE),
            }
        modules = {name: module.to(dtype).eval() for name, module in modules.items()}
        scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        pipe = StableDiffusionXLPipeline(
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            scheduler=scheduler,
            add_watermarker=False,
            force_zeros_for_empty_prompt=True,
            **modules,
        )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_pytorch(pipe: Any, device: str, steps: int, side: int, timer: Timer) -> dict[str, Any]:
    """The PyTorch UNet call (batch 2) with its FLOPs, and one image to pixels and to PNG bytes."""
    from pipelines.imageops.metadata import encode_image

    result, _ = time_pytorch_sdxl_unet(pipe, device, pipe.unet.dtype, side, timer)

    def pixels() -> Any:
        return pytorch_sdxl_image(pipe, side, steps)

    def image() -> bytes:
        return encode_image(pixels(), {"params": {}}, fmt="png", server_version="bench")

    result["image"] = summary(timer.wall(image, 3))
    picture = pixels()
    started = time.perf_counter()
    encode_image(picture, {"params": {}}, fmt="png", server_version="bench")
    result["png_encode_ms"] = (time.perf_counter() - started) * 1000
    result["vae_decode"] = time_pytorch_vae_decode(pipe, device, side, timer)
    return result


def time_pytorch_vae_decode(pipe: Any, device: str, side: int, timer: Timer) -> dict[str, Any]:
    """diffusers' VAE decode of one latent, in fp32 where its config sets ``force_upcast`` (as the
    pipeline upcasts it for every image), else in the pipeline's dtype."""
    import torch

    dtype = pipe.vae.dtype
    upcast = bool(pipe.vae.config.force_upcast)
    vae = pipe.vae.to(torch.float32) if upcast else pipe.vae
    latent = torch.randn((1, 4, side // 8, side // 8), device=device, dtype=vae.dtype)

    def decode() -> Any:
        with torch.no_grad():
            return vae.decode(latent).sample

    result = {**summary(timer.events(decode, 10)), "fp32": upcast or vae.dtype == torch.float32}
    pipe.vae.to(dtype)
    return result


def bench_ours(folder: Path, steps: int, side: int, timer: Timer, device: str, out: Path) -> dict[str, Any]:
    """Our SDXL path: the warmed UNet graph at batch 2, then ``txt2img_sdxl`` text to PNG bytes."""
    from functools import partial

    from pipelines.diffusion.model import Run, load_model
    from pipelines.diffusion.sdxl import txt2img_sdxl
    from pipelines.gpu import runtime
    from pipelines.gpu.runtime import Bucket, GpuSettings, gpu_model
    from pipelines.imageops.metadata import encode_image
    from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER, SessionCache, SessionSettings

    providers = (CUDA_PROVIDER, CPU_PROVIDER) if device == "cuda" else (CPU_PROVIDER,)
    model = load_model(folder.parent, folder.name, SessionCache(2, SessionSettings(providers=providers)))
    result: dict[str, Any] = {}
    if device == "cuda":
        import torch

        # The worker's own warm-up (both text encoders, every UNet input read off the graph), at
        # one image and at two batched jobs.
        buckets = [Bucket(side, side, jobs) for jobs in SDXL_BATCH_JOBS]
        result["memory"] = warm_memory(folder, buckets)
        started = time.monotonic()
        result["warm_up_missed"] = [str(bucket) for bucket in runtime.warm_up(model, buckets)]
        result["warm_up_s"] = time.monotonic() - started
        on_gpu = gpu_model(folder, GpuSettings())
        unet = on_gpu.unet
        hidden, pooled = (unet.inputs[name].shape[-1] for name in ("encoder_hidden_states", "text_embeds"))
        feeds = sdxl_unet_inputs("cuda", torch.float16, side, int(hidden), int(pooled))
        shapes = {"out_sample": tuple(feeds["sample"].shape)}
        # The same shapes as the warm-up's capture: this replays its CUDA graph.
        result["unet_batch2"] = summary(timer.events(partial(unet, feeds, shapes), 30, on_gpu.stream))
        output = unet(feeds, shapes)["out_sample"].float()
        torch.cuda.synchronize()
        result["unet_output_finite"] = bool(torch.isfinite(output).all())
        try:
            result["profile"] = profile_kernels(
                partial(unet, feeds, shapes), out / "sdxl-unet-kernels.txt", calls=3
            )
        except Exception as err:
            logger.exception("profiling failed")
            result["profile"] = {"error": f"{type(err).__name__}: {err}"[:500]}
        latent = torch.randn((1, 4, side // 8, side // 8), device="cuda")
        result["vae_decode"] = {
            **summary(timer.events(partial(on_gpu.decode, latent), 10, on_gpu.stream)),
            "fp32": on_gpu.vae_decoder.dtype("latent_sample") == torch.float32,
            "output_finite": bool(torch.isfinite(on_gpu.decode(latent)).all()),
        }
    generation = time_sdxl_images(model, folder.name, side, steps, timer, result)
    started = time.perf_counter()
    picture = txt2img_sdxl(Run(model, generation))[0]
    encode_started = time.perf_counter()
    encode_image(picture, {"params": {}}, fmt="png", server_version="bench")
    result["image_without_png_ms"] = (encode_started - started) * 1000
    result["png_encode_ms"] = (time.perf_counter() - encode_started) * 1000
    result["batching"] = time_sdxl_batches(model, generation, timer)
    return result


def time_sdxl_batches(model: Any, generation: Any, timer: Timer) -> dict[str, Any]:
    """Images/s of ``txt2img_batch`` (the worker's batched loop) at each of ``SDXL_BATCH_JOBS``, to
    pixels, and the largest pixel difference of a job alone against the same job in a batch."""
    from dataclasses import replace

    from pipelines.gpu.batch import Txt2ImgJob, denoiser_for, txt2img_batch

    denoiser = denoiser_for(model)

    def jobs(count: int) -> list[Any]:
        return [Txt2ImgJob(replace(generation, seed=seed)) for seed in range(count)]

    def batch(count: int) -> Callable[[], Any]:
        return lambda: txt2img_batch(model, jobs(count), denoiser=denoiser)

    result: dict[str, Any] = {
        str(count): images_per_second(timer.wall(batch(count), 2), count) for count in SDXL_BATCH_JOBS
    }
    largest = SDXL_BATCH_JOBS[-1]
    alone = txt2img_batch(model, [jobs(largest)[-1]], denoiser=denoiser)[0].images[0]
    together = txt2img_batch(model, jobs(largest), denoiser=denoiser)[-1].images[0]
    result["max_pixel_diff_alone_vs_batch"] = pixel_difference(alone, together)
    # What the batch's difference is measured against: the very same job alone, once more.
    again = txt2img_batch(model, [jobs(largest)[-1]], denoiser=denoiser)[0].images[0]
    result["max_pixel_diff_alone_twice"] = pixel_difference(alone, again)
    result["one_call"] = one_call_difference(model, generation, denoiser)
    return result


def one_call_difference(model: Any, generation: Any, denoiser: Any) -> dict[str, Any]:
    """One UNet call on a job's rows alone against the same rows twice over (a batch of two jobs):
    how far the first rows' noise predictions are apart. Over the loop's steps the images can drift
    further; a difference at this one call is the batch's own, not the loop's.

    On CUDA the same is measured on the dynamic session (``dynamic``: no CUDA graph, shapes chosen at
    run time), and each replay against the dynamic session's call (``graph_vs_dynamic_*``): a
    difference in the replays alone would be the captured graph's, one in both the kernels'."""
    import torch

    from pipelines.diffusion.sdxl import SdxlRun, unet_inputs
    from pipelines.gpu.batch import GpuDenoiser

    conditioning = unet_inputs(SdxlRun(model, generation).conditioning)
    rows = len(conditioning["encoder_hidden_states"])
    height, width = generation.height // 8, generation.width // 8
    generator = torch.Generator().manual_seed(0)

    def compare(first: Any, second: Any) -> dict[str, float]:
        difference = (second - first).abs()
        return {"max_abs": float(difference.max()), "rel_l2": float(difference.norm() / first.norm())}

    with denoiser.stream():
        sample = torch.randn((rows, 4, height, width), generator=generator).to(denoiser.device)
        inputs = {name: torch.from_numpy(value).to(denoiser.device) for name, value in conditioning.items()}

        def predict(copies: int, dynamic: bool = False) -> Any:
            feeds = {
                "sample": torch.cat([sample] * copies),
                "timestep": torch.full((rows * copies,), 500.0, device=denoiser.device),
                **{name: torch.cat([value] * copies) for name, value in inputs.items()},
            }
            if not dynamic:
                sample_in, timestep = feeds.pop("sample"), feeds.pop("timestep")
                return denoiser.predict_noise(sample_in, timestep, feeds)[:rows]
            unet = denoiser.on_gpu.unet
            shape = {"out_sample": tuple(feeds["sample"].shape)}
            return unet.run_dynamic(feeds, shape)["out_sample"][:rows].float()

        alone, batched = predict(1), predict(2)
        result: dict[str, Any] = {**compare(alone, batched), "max_abs_prediction": float(alone.abs().max())}
        if isinstance(denoiser, GpuDenoiser):
            dynamic_alone, dynamic_batched = predict(1, dynamic=True), predict(2, dynamic=True)
            result["dynamic"] = compare(dynamic_alone, dynamic_batched)
            result["graph_vs_dynamic_alone"] = compare(dynamic_alone, alone)
            result["graph_vs_dynamic_batched"] = compare(dynamic_batched, batched)
        return result


def format_table(report: dict[str, Any]) -> str:
    pytorch, ours = report["pytorch"], report["ours"]
    flops = pytorch["flops_unet_batch2"]
    lines = [f"{'measure':44} {'PyTorch':>10} {'ours':>10} {'ratio':>7} {'TFLOP/s':>8} {'%peak':>6}"]
    torch_ms = pytorch["unet_batch2"]["median_ms"]
    if "unet_batch2" in ours:
        ms = ours["unet_batch2"]["median_ms"]
        tflops = flops / ms / 1e9
        lines.append(
            f"{'SDXL UNet b2 1024, CUDA graph (ms)':44} {torch_ms:10.2f} {ms:10.2f} {torch_ms / ms:7.2f}"
            f" {tflops:8.1f} {tflops / PEAK_TFLOPS * 100:6.1f}"
        )
    tflops = flops / torch_ms / 1e9
    lines.append(f"{'  PyTorch eager fp16 UNet':44} {torch_ms:10.2f} {'':>10} {'':>7} {tflops:8.1f}")
    image_torch, image_ours = pytorch["image"]["median_ms"], ours["image"]["median_ms"]
    label = f"SDXL image, {report['steps']} steps, text to PNG (ms)"
    lines.append(f"{label:44} {image_torch:10.1f} {image_ours:10.1f} {image_torch / image_ours:7.2f}")
    lines.append(
        f"{'  PNG encode of one image (ms)':44} {pytorch['png_encode_ms']:10.1f} "
        f"{ours['png_encode_ms']:10.1f}"
    )
    if "vae_decode" in ours:
        fp32 = "fp32" if ours["vae_decode"]["fp32"] else "fp16"
        lines.append(
            f"{'  VAE decode of one latent, ours ' + fp32 + ' (ms)':44} "
            f"{pytorch['vae_decode']['median_ms']:10.1f} {ours['vae_decode']['median_ms']:10.1f}"
        )
    for jobs, figures in ours.get("batching", {}).items():
        if jobs.isdigit():
            label = f"  images/s, {jobs} job(s) batched, to pixels"
            lines.append(f"{label:44} {'':>10} {figures['images_per_s']:10.3f}")
    if "max_pixel_diff_alone_vs_batch" in ours.get("batching", {}):
        label = "  largest pixel difference, alone vs batched"
        lines.append(f"{label:44} {'':>10} {ours['batching']['max_pixel_diff_alone_vs_batch']:10d}")
        if "max_pixel_diff_alone_twice" in ours["batching"]:
            label = "  largest pixel difference, alone twice"
            lines.append(f"{label:44} {'':>10} {ours['batching']['max_pixel_diff_alone_twice']:10d}")
        one_call = ours["batching"]["one_call"]
        label = "  one UNet call, alone vs batched (rel. L2)"
        lines.append(f"{label:44} {'':>10} {one_call['rel_l2']:10.2e}")
        for case in ("dynamic", "graph_vs_dynamic_alone", "graph_vs_dynamic_batched"):
            if case in one_call:
                label = f"    {case.replace('_', ' ')} (rel. L2)"
                lines.append(f"{label:44} {'':>10} {one_call[case]['rel_l2']:10.2e}")
    for case, figures in report.get("previews", {}).items():
        label = f"  live preview {case}, decode + JPEG (ms)"
        lines.append(f"{label:44} {'':>10} {figures['median_ms']:10.1f}")
    return "\n".join(lines + memory_line(ours.get("memory")))


def run(args: argparse.Namespace) -> int:
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    side = args.side or (1024 if args.architecture == "sdxl" else 64)
    timer = Timer(args.device)
    report: dict[str, Any] = {
        "architecture": args.architecture,
        "device": args.device,
        "steps": args.steps,
        "side": side,
        "weights": "ours regenerated at random on the GPU machine (speed only; outputs not compared)",
    }
    if args.device == "cuda":
        report.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    report["restore_s"] = restore(args.folder)
    save(report, args.out)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    started = time.monotonic()
    pipe = build_pytorch_sdxl(args.folder, args.architecture, args.device, dtype, args.src)
    report["pytorch_build_s"] = time.monotonic() - started
    report["pytorch"] = bench_pytorch(pipe, args.device, args.steps, side, timer)
    save(report, args.out)
    del pipe
    if args.device == "cuda":
        torch.cuda.empty_cache()
    report["gpu_markers"] = (
        json.loads((args.folder / "gpu.json").read_text()) if (args.folder / "gpu.json").exists() else None
    )
    report["ours"] = bench_ours(args.folder, args.steps, side, timer, args.device, args.out)
    save(report, args.out)
    with tempfile.TemporaryDirectory(prefix="previews-") as work:
        report["previews"] = time_previews(args.device, Path(work))
    save(report, args.out)
    print(format_table(report), flush=True)
    return 0


def save(report: dict[str, Any], out: Path) -> None:
    (out / "sdxl-bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_prebuilt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    fusing = verbs.add_parser("fuse", help="fuse an exported folder into weightless fp16 graphs")
    fusing.add_argument("folder", type=Path)
    fusing.add_argument("dest", type=Path)
    fusing.add_argument("components", nargs="*", help="only these components (default: all)")
    stripping = verbs.add_parser("strip", help="copy a converted folder without its weights")
    stripping.add_argument("folder", type=Path)
    stripping.add_argument("dest", type=Path)
    running = verbs.add_parser("run", help="restore random weights and time PyTorch and ours")
    running.add_argument("--folder", type=Path, required=True, help="stripped (or converted) model folder")
    running.add_argument("--out", type=Path, required=True)
    running.add_argument("--architecture", choices=("sdxl", "tiny-sdxl"), default="sdxl")
    running.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    running.add_argument("--src", type=Path, default=None, help="diffusers folder for PyTorch's weights")
    running.add_argument("--steps", type=int, default=30)
    running.add_argument("--side", type=int, default=None)
    args = parser.parse_args(argv)
    if args.verb == "fuse":
        print(json.dumps(fuse(args.folder, args.dest, args.components)))
        return 0
    if args.verb == "strip":
        print(json.dumps(strip(args.folder, args.dest)))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.gpu``: our CUDA path against diffusers' PyTorch fp16 pipelines, same weights.

In one run on one GPU: build full-size SD 1.5 with random weights, convert it through our
converter (``--optimize gpu``) in a background process while PyTorch is timed, then time the
production path (``pipelines.gpu``): the UNet call under several CUDA provider settings, a full
50-step 512x512 image from text to PNG bytes, images/s for 1, 2, 4 and 8 batched jobs, a 4-step
image, and img2img on the CUDA graphs against the worker's sessions (the path it took before). It
prints a table and writes ``gpu-bench.json`` (every figure) and a kernel profile.

    python -m bench.gpu --out DIR [--architecture sd15|tiny] [--device cuda|cpu]

Baselines, in the same process on the same weights: diffusers' UNet in PyTorch eager and through
``torch.compile`` (``--compile``, default ``max-autotune``, which autotunes while the conversion
runs), warm-up first, then 40 timed calls each (median, p10, p90). ``--reuse`` skips the build and
conversion when ``--work`` already holds them (a second call on the same GPU machine).

``--architecture tiny --device cpu`` runs the same steps on the demo model without a GPU (the
CUDA sections are skipped), to check the script before spending GPU time.

``--architecture sdxl`` (or ``tiny-sdxl``) runs the SDXL rows instead: full-size SDXL base with
random weights, PyTorch = diffusers' ``StableDiffusionXLPipeline`` in fp16; the UNet call at
1024x1024 with guidance (batch 2) and a 30-step 1024x1024 image from text to PNG bytes
(``pipelines.diffusion.sdxl.txt2img_sdxl`` on CUDA graphs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.architectures import ARCHITECTURES, write_checkpoint

logger = logging.getLogger(__name__)

#: Dense fp16 tensor-core peak of an H200 (SXM), the ``% of peak`` reference.
PEAK_TFLOPS = 989.0
#: Steps of the few-step image (an LCM or turbo model's usual count).
FEW_STEPS = 4
#: img2img's strength in ``time_img2img``: 30 of 50 steps.
IMG2IMG_STRENGTH = 0.6
PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, lowres"
BATCH_JOBS = (1, 2, 4, 8)
#: ``torch.compile`` modes for the second PyTorch baseline; ``max-autotune`` also captures CUDA graphs.
COMPILE_MODES = ("max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead", "none")
#: UNet calls timed per baseline, after warm-up.
UNET_CALLS = 40
#: Architectures benchmarked by ``run_sdxl_bench``.
SDXL_ARCHITECTURES = ("sdxl", "tiny-sdxl")
#: CUDA provider settings tried for the UNet call; ``DEFAULT_VARIANT`` (what workers run) serves the
#: image timings.
#: ``fuse_conv_bias`` (``GpuSettings``) folds each convolution's bias into cuDNN's fused convolution
#: instead of a separate add kernel; by default (None, ``auto``) each model component times both at
#: its first capture and keeps the faster. ``sdpa_kernel=8`` picks cuDNN's flash attention.
VARIANTS: dict[str, dict[str, Any]] = {
    "static": {"cuda_graphs": False, "fuse_conv_bias": False},
    "static+fuse-conv-bias": {"cuda_graphs": False, "fuse_conv_bias": True},
    "graph, own stream": {"shared_stream": False, "fuse_conv_bias": False},
    "graph": {"fuse_conv_bias": False},
    "graph+cudnn-attention": {"fuse_conv_bias": False, "provider_options": {"sdpa_kernel": "8"}},
    "graph+fuse-conv-bias": {"fuse_conv_bias": True},
    "graph, bias fused or not by timing (auto, default)": {},
    "graph+fuse-conv-bias+cudnn-attention": {
        "fuse_conv_bias": True,
        "provider_options": {"sdpa_kernel": "8"},
    },
    "graph+fuse-conv-bias+heuristic-search": {
        "fuse_conv_bias": True,
        "provider_options": {"cudnn_conv_algo_search": "HEURISTIC"},
    },
    "graph+fuse-conv-bias+tunable-ops": {
        "fuse_conv_bias": True,
        "provider_options": {"tunable_op_enable": "1", "tunable_op_tuning_enable": "1"},
    },
}
#: The variant a worker runs (``GpuSettings()``'s defaults).
DEFAULT_VARIANT = "graph, bias fused or not by timing (auto, default)"
#: Variants whose kernels are profiled: no graph (per-node launches visible), and the fastest.
PROFILED = ("static", "static+fuse-conv-bias")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The benchmark's own options."""
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-bench.json and logs")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/onnx-web-bench"), help="scratch folder for models"
    )
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="sd15")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps of the full image (default 50, SDXL 30)"
    )
    parser.add_argument("--workers", type=int, default=4, help="components fused in parallel")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the checkpoint and converted models already under --work (no conversion)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile mode of the second PyTorch baseline (default max-autotune on CUDA, none on CPU)",
    )
    parser.add_argument(
        "--baselines-only",
        action="store_true",
        help="time PyTorch eager's and torch.compile's UNet calls only: no conversion, no images and "
        "none of ours (for a compile mode that needs a command of its own; compare with ours from the "
        "same machine)",
    )


class Timer:
    """Wall-clock (after a device sync) or CUDA-event timing of a callable, in milliseconds."""

    def __init__(self, device: str) -> None:
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def wall(self, work: Callable[[], Any], runs: int, warmup: int = 1) -> list[float]:
        for _ in range(warmup):
            work()
        self.sync()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            work()
            self.sync()
            times.append((time.perf_counter() - started) * 1000)
        return times

    def events(self, work: Callable[[], Any], runs: int, stream: Any = None, warmup: int = 5) -> list[float]:
        """Per-call times from CUDA events recorded on ``stream`` (the current one if None)."""
        import torch

        if self.device != "cuda":
            return self.wall(work, runs, warmup)
        stream = stream or torch.cuda.current_stream()
        for _ in range(warmup):
            work()
        torch.cuda.synchronize()
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            work()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times


#: (family, latent side) of the live previews ``time_previews`` measures: a 512² SD image, a 1024² SDXL one.
PREVIEW_CASES = (("sd", 64), ("sdxl", 128))


def time_previews(device: str, work: Path, runs: int = 20) -> dict[str, Any]:
    """What one live preview costs a worker on ``device``, apart from its upload and row note:
    the worker's own ``render_preview`` (TAESD decode in a session cache built as the worker's
    preview cache is, the shrink to 256 px, the JPEG), from latents in host memory, as the loops'
    lazy getter hands them over. Random-weight decoders of TAESD's architecture (speed only)."""
    import numpy as np

    from pipelines.diffusion.preview import DEFAULT_PREVIEW_SIDE, render_preview
    from pipelines.models.preview import build_demo_previews
    from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER, SessionCache, SessionSettings

    build_demo_previews(work)
    providers = (CUDA_PROVIDER, CPU_PROVIDER) if device == "cuda" else (CPU_PROVIDER,)
    sessions = SessionCache(len(PREVIEW_CASES), SessionSettings(providers=providers))
    timer = Timer("cpu")  # render_preview returns bytes in host memory: wall time is the cost
    result: dict[str, Any] = {}
    for family, side in PREVIEW_CASES:
        latents = np.random.default_rng(0).standard_normal((2, 4, side, side)).astype(np.float32)

        def render(family: str = family, latents: Any = latents) -> None:
            if render_preview(work, sessions, family, latents, DEFAULT_PREVIEW_SIDE) is None:
                raise RuntimeError(f"no preview decoder for {family} under {work}")

        result[f"{family}_{side * 8}"] = summary(timer.wall(render, runs, warmup=3))
    return result


def summary(times: list[float]) -> dict[str, float]:
    """Median, mean and spread (min, 10th and 90th percentile, max) of timings in ms."""
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "p10_ms": deciles[0],
        "p90_ms": deciles[-1],
        "max_ms": max(times),
        "runs": len(times),
    }


def unet_inputs(device: str, dtype: Any, batch: int, side: int, hidden: int) -> tuple[Any, Any, Any]:
    """Random UNet inputs (never zeros: they can run faster than real data)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(7)
    sample = torch.randn((batch, 4, side, side), generator=generator).to(device, dtype)
    timestep = torch.full((batch,), 981.0).to(device)
    states = torch.randn((batch, 77, hidden), generator=generator).to(device, dtype)
    return sample, timestep, states


def count_flops(unet: Any, inputs: tuple[Any, Any, Any]) -> float:
    """FLOPs of one UNet call, counted by torch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(*inputs, return_dict=False)
    return float(counter.get_total_flops())


def bench_pytorch(
    src: Path, device: str, steps: int, side: int, timer: Timer, *, unet_only: bool = False
) -> dict[str, Any]:
    """diffusers' StableDiffusionPipeline in fp16 (fp32 on CPU): UNet call, then (unless
    ``unet_only``) the image and batching."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from pipelines.imageops.metadata import encode_image

    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(src, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    hidden = pipe.unet.config.cross_attention_dim
    inputs = unet_inputs(device, dtype, 2, side // 8, hidden)
    result: dict[str, Any] = {"flops_unet_batch2": count_flops(pipe.unet, inputs)}
    result["unet_batch2"] = time_unet(pipe.unet, device, side, timer)
    result["unet_output"] = unet_call_output(pipe.unet, inputs)

    def image(jobs: int) -> Callable[[], list[bytes]]:
        def run() -> list[bytes]:
            generator = [torch.Generator("cpu").manual_seed(seed) for seed in range(jobs)]
            images = pipe(
                [PROMPT] * jobs,
                negative_prompt=[NEGATIVE] * jobs,
                height=side,
                width=side,
                num_inference_steps=steps,
                guidance_scale=7.5,
                generator=generator,
            ).images
            return [encode_image(item, {"params": {}}, fmt="png", server_version="bench") for item in images]

        return run

    if not unet_only:
        result["image"] = summary(timer.wall(image(1), 3))
        result["batching"] = {
            str(jobs): images_per_second(timer.wall(image(jobs), 2), jobs) for jobs in BATCH_JOBS
        }
    result["pipe"] = pipe
    return result


def time_unet(unet: Any, device: str, side: int, timer: Timer) -> dict[str, float]:
    """PyTorch eager UNet calls at batch 2 (one guided image)."""
    import torch

    inputs = unet_inputs(device, unet.dtype, 2, side // 8, unet.config.cross_attention_dim)

    def call() -> None:
        with torch.no_grad():
            unet(*inputs, return_dict=False)

    return summary(timer.events(call, UNET_CALLS))


class CompiledUnet:
    """``torch.compile(mode=...)`` of a UNet: the baseline a speed-minded PyTorch user runs.

    ``compile()`` makes the first calls (which compile and, for ``max-autotune``, benchmark kernel
    choices and capture a CUDA graph); ``time()`` times warm calls later, so compilation can overlap
    other work. A failure is recorded, not raised, so the eager and ONNX Runtime figures survive it.
    """

    def __init__(self, unet: Any, mode: str, device: str, side: int) -> None:
        self.unet = unet
        self.mode = mode
        self.inputs = unet_inputs(device, unet.dtype, 2, side // 8, unet.config.cross_attention_dim)
        self.result: dict[str, Any] = {"mode": mode}
        self.compiled: Any = None

    def call(self) -> Any:
        import torch

        # Marks a new step for CUDA graph trees: the previous call's outputs may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            return self.compiled(*self.inputs, return_dict=False)

    def compile(self, timer: Timer) -> None:
        import torch

        started = time.monotonic()
        try:
            self.compiled = torch.compile(self.unet, mode=self.mode, fullgraph=False)
            for _ in range(3):
                output = self.call()[0].float().clone()
            timer.sync()
            self.result["compile_s"] = time.monotonic() - started
            difference = (output - unet_call_output(self.unet, self.inputs)).abs()
            self.result["max_abs_diff_vs_eager"] = float(difference.max())
        except Exception as err:
            logger.exception("torch.compile(mode=%s) failed", self.mode)
            self.result["error"] = f"{type(err).__name__}: {err}"[:500]

    def time(self, timer: Timer) -> dict[str, Any]:
        """Timed warm calls (after ``compile``), or the compile error."""
        if "error" not in self.result:
            try:
                self.result.update(summary(timer.events(self.call, UNET_CALLS)))
            except Exception as err:
                logger.exception("timing torch.compile(mode=%s) failed", self.mode)
                self.result["error"] = f"{type(err).__name__}: {err}"[:500]
        return self.result


def unet_call_output(unet: Any, inputs: tuple[Any, Any, Any]) -> Any:
    """The UNet's output on ``inputs``, kept to compare with ONNX Runtime's."""
    import torch

    with torch.no_grad():
        return unet(*inputs, return_dict=False)[0].float()


def images_per_second(times: list[float], jobs: int) -> dict[str, float]:
    best = statistics.median(times)
    return {"jobs": jobs, "median_ms": best, "images_per_s": jobs / best * 1000}


def start_conversion(
    src: Path, dest: Path, workers: int, optimize: str, log: Path
) -> subprocess.Popen[bytes]:
    """Convert ``src`` through ``convert_diffusers_folder`` in another process (pure-Python fusion)."""
    code = (
        "import sys; from pathlib import Path; "
        "from pipelines.models.convert import convert_diffusers_folder as convert; "
        "convert(Path(sys.argv[1]), Path(sys.argv[2]), optimize=sys.argv[3], workers=int(sys.argv[4]), "
        "progress=lambda line: print(line, flush=True))"
    )
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", code, str(src), str(dest), optimize, str(workers)],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def bench_unet_variants(folder: Path, reference: Any, side: int, timer: Timer) -> dict[str, Any]:
    """The UNet call (batch 2) under each of ``VARIANTS``; errors are recorded, not raised.

    Sessions of ``PROFILED`` variants and of the fastest so far stay in ``"session"``; the others
    are dropped as soon as they are timed (each holds a copy of the weights).
    """
    import torch

    from pipelines.gpu.runtime import CudaSession, GpuSettings
    from pipelines.models.layout import ONNX_FILE

    results: dict[str, Any] = {}
    best: str | None = None
    for name, options in VARIANTS.items():
        started = time.monotonic()
        try:
            settings = GpuSettings(**options)
            stream = torch.cuda.Stream()
            session = CudaSession(folder / "unet" / ONNX_FILE, settings, stream)
            sample, timestep, states = unet_inputs("cuda", torch.float16, 2, side // 8, states_size(session))
            feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": states}
            shapes = {"out_sample": tuple(sample.shape)}
            captured = session.capture(feeds, shapes)
            ready = time.monotonic() - started
            output = session(feeds, shapes)["out_sample"].float()
            torch.cuda.synchronize()
            times = timer.events(partial(session, feeds, shapes), UNET_CALLS, stream)
            difference = (output - reference).abs()
            results[name] = {
                **summary(times),
                "captured": captured,
                "load_and_capture_s": ready,
                "max_abs_diff_vs_pytorch": float(difference.max()),
                "rel_l2_vs_pytorch": float(difference.norm() / reference.norm()),
                "fuse_conv_bias": session.fuse_conv_bias,
                "fuse_conv_bias_timings_ms": {
                    str(key): value for key, value in session.fuse_conv_bias_timings.items()
                },
                "session": session,
            }
        except Exception as err:
            logger.exception("variant %s failed", name)
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            continue
        if best is None or results[name]["median_ms"] < results[best]["median_ms"]:
            best, beaten = name, best
        else:
            beaten = name
        if beaten is not None and beaten not in PROFILED:
            results[beaten].pop("session", None)
        torch.cuda.empty_cache()
    return results


def states_size(session: Any) -> int:
    size = session.inputs["encoder_hidden_states"].shape[-1]
    return int(size) if isinstance(size, int) else 768


def profile_unet(session: Any, side: int, listing: Path) -> dict[str, Any]:
    """Kernel time of one UNet call by kernel family (CUPTI sees ONNX Runtime's kernels and graph replays)."""
    import torch

    sample, timestep, states = unet_inputs("cuda", torch.float16, 2, side // 8, states_size(session))
    feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": states}
    shapes = {"out_sample": tuple(sample.shape)}
    return profile_kernels(lambda: session(feeds, shapes), listing, calls=5)


def profile_kernels(call: Any, listing: Path, calls: int) -> dict[str, Any]:
    """GPU time per call of ``call()`` by kernel family, from CUPTI (which sees CUDA graph replays).

    Writes every kernel, slowest first, to ``listing``.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.key] = kernels.get(event.key, 0.0) + event.device_time_total / 1000 / calls
    listing.write_text(
        "".join(
            f"{ms:9.3f} ms  {name[:160]}\n" for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])
        )
    )
    families: dict[str, float] = {}
    for name, ms in kernels.items():
        families[kernel_family(name)] = families.get(kernel_family(name), 0.0) + ms
    return {
        "ms_per_call_by_family": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        "kernel_ms_per_call": sum(kernels.values()),
        "kernels": len(kernels),
    }


def kernel_family(name: str) -> str:
    """A coarse family for a CUDA kernel name."""
    lowered = name.lower()
    for family, marks in (
        ("attention", ("fmha", "flash", "attention", "mha", "softmax")),
        ("convolution", ("conv", "implicit", "wgrad", "dgrad", "cudnn", "xmma_fprop", "sm90_xmma")),
        ("matmul", ("gemm", "cutlass", "cublas", "sm90_")),
        ("group norm", ("groupnorm", "group_norm")),
        ("layer norm", ("layernorm", "layer_norm")),
        ("transpose/copy", ("transpose", "copy", "memcpy", "permute")),
    ):
        if any(mark in lowered for mark in marks):
            return family
    return "elementwise/other"


def bench_ours(
    folder: Path, settings: Any, steps: int, side: int, timer: Timer, device: str, out: Path
) -> dict[str, Any]:
    """The production path: ``txt2img_batch`` on the warmed GPU model, text to PNG bytes; on CUDA
    also the UNet's batch scaling (``unet_batch_scaling``, kernel listings written to ``out``)."""
    from pipelines.diffusion.model import load_model
    from pipelines.gpu.batch import CpuDenoiser, GpuDenoiser, Txt2ImgJob, txt2img_batch
    from pipelines.gpu.runtime import Bucket, gpu_model
    from pipelines.imageops.metadata import encode_image
    from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER, SessionCache, SessionSettings

    providers = (CUDA_PROVIDER, CPU_PROVIDER) if device == "cuda" else (CPU_PROVIDER,)
    sessions = SessionCache(2, SessionSettings(providers=providers))
    model = load_model(folder.parent, folder.name, sessions)
    result: dict[str, Any] = {}
    buckets = [*(Bucket(side, side, jobs) for jobs in BATCH_JOBS), Bucket(side, side, 1, guidance=False)]
    if device == "cuda":
        result["memory"] = warm_memory(folder, buckets)
    started = time.monotonic()
    denoiser: Any
    if device == "cuda":
        on_gpu = gpu_model(folder, settings)
        on_gpu.warm_up(buckets)
        denoiser = GpuDenoiser(model, on_gpu)
    else:
        denoiser = CpuDenoiser(model)
    result["warm_up_s"] = time.monotonic() - started

    def job(seed: int) -> Txt2ImgJob:
        return Txt2ImgJob(bench_generation(folder.name, "ddim", side, steps, seed))

    def run(jobs: int) -> Callable[[], list[bytes]]:
        def work() -> list[bytes]:
            outcomes = txt2img_batch(model, [job(seed) for seed in range(jobs)], denoiser=denoiser)
            return [
                encode_image(image, {"params": {}}, fmt="png", server_version="bench")
                for outcome in outcomes
                for image in outcome.images
            ]

        return work

    result["text_encoder_warm_s"] = timed(run(1))
    result["image"] = summary(timer.wall(run(1), 3))
    result["image_to_pixels"] = summary(
        timer.wall(lambda: txt2img_batch(model, [job(0)], denoiser=denoiser), 3, warmup=0)
    )
    image = txt2img_batch(model, [job(0)], denoiser=denoiser)[0].images[0]
    result["encodings"] = {"generated": time_encodings(image), "smooth": time_encodings(smooth_image(side))}
    result["batching"] = {str(jobs): images_per_second(timer.wall(run(jobs), 2), jobs) for jobs in BATCH_JOBS}
    result["few_step"] = time_few_step(model, denoiser, side, timer)
    result["img2img"] = time_img2img(model, side, steps, timer)
    alone = txt2img_batch(model, [job(2)], denoiser=denoiser)[0].images[0]
    together = txt2img_batch(model, [job(seed) for seed in range(4)], denoiser=denoiser)[2].images[0]
    result["same_seed_max_pixel_diff_alone_vs_batch_of_4"] = pixel_difference(alone, together)
    if device == "cuda":
        result["unet_batch_scaling"] = unet_batch_scaling(on_gpu, side, timer, out)
    return result


#: Jobs of the two warmed UNet shapes whose kernels ``unet_batch_scaling`` compares: one job against
#: the four of the batching target (batch 2 against batch 8, with guidance rows).
SCALING_JOBS = (1, 4)


def unet_batch_scaling(
    on_gpu: Any, side: int, timer: Timer, out: Path, jobs_pair: tuple[int, int] = SCALING_JOBS
) -> dict[str, Any]:
    """Why batching gains what it gains: one UNet replay at the warmed shapes of ``jobs_pair``
    (``SCALING_JOBS`` unless given), timed (CUDA events) and profiled by kernel family, with each
    family's time per image at the larger batch against the smaller (``family_scaling``). Each
    kernel listing is written to ``out``."""
    import torch

    from pipelines.diffusion.model import LATENT_CHANNELS
    from pipelines.gpu.runtime import Bucket, warm_feeds

    result: dict[str, Any] = {}
    with torch.cuda.stream(on_gpu.stream):
        for jobs in jobs_pair:
            bucket = Bucket(side, side, jobs)
            feeds = warm_feeds(on_gpu.unet.inputs, bucket, on_gpu.device)
            shapes = {"out_sample": (bucket.unet_batch, LATENT_CHANNELS, *bucket.latent_size)}

            def call(feeds: dict[str, Any] = feeds, shapes: dict[str, Any] = shapes) -> None:
                on_gpu.unet(feeds, shapes)

            listing = out / f"unet-kernels-batch{bucket.unet_batch}.txt"
            result[str(jobs)] = {
                "jobs": jobs,
                "rows": bucket.unet_batch,
                "call": summary(timer.events(call, 30, stream=on_gpu.stream)),
                **profile_kernels(call, listing, calls=5),
                "listing": listing.name,
            }
    small, large = (result[str(jobs)] for jobs in jobs_pair)
    result["per_image_gain"] = (small["call"]["median_ms"] / small["jobs"]) / (
        large["call"]["median_ms"] / large["jobs"]
    )
    result["families"] = family_scaling(small, large)
    return result


def family_scaling(small: dict[str, Any], large: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per kernel family: its GPU time per image at the smaller batch and the larger
    (``ms_per_call_by_family`` over each row's ``jobs``), and their ratio, the gain batching gets
    from that family (1.0: none; the larger batch's jobs over the smaller's: the whole batch for the
    price of one call). Families seen at one batch only count 0 ms at the other."""
    names = {*small["ms_per_call_by_family"], *large["ms_per_call_by_family"]}
    rows = {}
    for name in names:
        before = small["ms_per_call_by_family"].get(name, 0.0) / small["jobs"]
        after = large["ms_per_call_by_family"].get(name, 0.0) / large["jobs"]
        rows[name] = {
            "ms_per_image_small": before,
            "ms_per_image_large": after,
            "gain": before / after if after > 0 else float("inf"),
        }
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["ms_per_image_large"]))


def time_few_step(model: Any, denoiser: Any, side: int, timer: Timer) -> dict[str, Any]:
    """A few-step image (``FEW_STEPS`` LCM steps at cfg 1, one UNet row per step: an LCM-LoRA or
    turbo model), text to pixels and text to PNG bytes. An LCM-distilled UNet adds one small linear
    layer (its guidance embedding) to each of these calls."""
    from pipelines.gpu.batch import Txt2ImgJob, txt2img_batch
    from pipelines.imageops.metadata import encode_image

    generation = replace(bench_generation(model.folder.name, "lcm", side, FEW_STEPS), cfg=1.0)

    def pixels() -> Any:
        return txt2img_batch(model, [Txt2ImgJob(generation)], denoiser=denoiser)[0].images[0]

    def image() -> bytes:
        return encode_image(pixels(), {"params": {}}, fmt="png", server_version="bench")

    return {
        "steps": FEW_STEPS,
        "image": summary(timer.wall(image, 10)),
        "image_to_pixels": summary(timer.wall(pixels, 10)),
    }


def time_img2img(model: Any, side: int, steps: int, timer: Timer) -> dict[str, Any]:
    """img2img at ``IMG2IMG_STRENGTH`` from a photo-like source, to pixels: on the CUDA graphs (the
    path a worker takes now) and on the worker's ONNX Runtime sessions (the path before), in turn,
    with the largest pixel difference between the two."""
    from unittest import mock

    import pipelines.gpu.runtime as runtime
    from pipelines.diffusion.img2img import img2img
    from pipelines.diffusion.model import Run

    generation = bench_generation(model.folder.name, "ddim", side, steps)
    source = smooth_image(side)

    def pixels() -> Any:
        return img2img(Run(model, generation), source, IMG2IMG_STRENGTH)[0]

    result: dict[str, Any] = {
        "strength": IMG2IMG_STRENGTH,
        # Without a GPU both timings are of the sessions.
        "graphs_taken": runtime.graph_model(model) is not None,
        "graphs": summary(timer.wall(pixels, 3)),
    }
    on_graphs = pixels()
    with mock.patch.object(runtime, "graph_model", lambda model, load=True: None):
        result["sessions"] = summary(timer.wall(pixels, 3))
        on_sessions = pixels()
    result["max_pixel_diff_graphs_vs_sessions"] = pixel_difference(on_graphs, on_sessions)
    return result


#: Output encodings compared: (format, PNG writer, Pillow's zlib strategy and level); the first is
#: the default.
ENCODINGS: dict[str, tuple[str, str, int, int]] = {
    "png, parallel writer (default)": ("png", "parallel", zlib.Z_HUFFMAN_ONLY, -1),
    "png, Pillow, Huffman only (the default before)": ("png", "pillow", zlib.Z_HUFFMAN_ONLY, -1),
    "png, Pillow, zlib 6 filtered (Pillow's default)": ("png", "pillow", zlib.Z_FILTERED, 6),
    "jpeg, quality 95": ("jpeg", "parallel", zlib.Z_HUFFMAN_ONLY, -1),
}


def time_encodings(image: Any, runs: int = 5) -> dict[str, dict[str, float]]:
    """Encoding time (median of ``runs``, ms) and size of ``image`` in each of ``ENCODINGS``."""
    from pipelines.imageops.metadata import encode_image

    results = {}
    for label, (fmt, writer, strategy, level) in ENCODINGS.items():
        times, data = [], b""
        for _ in range(runs):
            started = time.perf_counter()
            data = encode_image(
                image,
                {"params": {}},
                fmt=fmt,
                server_version="bench",
                png_writer=writer,
                png_strategy=strategy,
                png_level=level,
            )
            times.append((time.perf_counter() - started) * 1000)
        results[label] = {"median_ms": statistics.median(times), "bytes": len(data)}
    return results


def smooth_image(side: int) -> Any:
    """A photo-like image (smooth shapes plus grain): random-weight outputs are noise, PNG's worst case."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    coarse = Image.fromarray(generator.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC)).astype(np.int16)
    grain = generator.integers(-6, 7, smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def bench_generation(name: str, scheduler: str, side: int, steps: int, seed: int = 0) -> Any:
    """What every timed image of ours generates: the benchmark's prompts, one square image, cfg 7.5."""
    from pipelines.diffusion.model import Generation

    return Generation(
        model=name,
        scheduler=scheduler,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=seed,
        steps=steps,
        cfg=7.5,
        eta=0.0,
        batch=1,
        width=side,
        height=side,
    )


def timed(work: Callable[[], Any]) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def warm_memory(folder: Path, buckets: list[Any]) -> dict[str, Any]:
    """GPU memory that the UNet and VAE decoder of ``folder`` take once warmed at ``buckets``, GiB
    over what was in use before: with one copy of the weights for all their sessions (the workers'
    setting) and with a copy per session (``GpuSettings.share_weights``). Each model is made afresh
    and freed after."""
    import gc

    import torch

    from pipelines.gpu.runtime import GpuDiffusionModel, GpuSettings, device_memory_used

    def used() -> int:
        return device_memory_used(torch.cuda.current_device())

    result: dict[str, Any] = {"buckets": len(buckets)}
    for label, share in (("shared", True), ("per_session", False)):
        gc.collect()
        torch.cuda.empty_cache()
        before, started = used(), time.monotonic()
        model = GpuDiffusionModel(folder, GpuSettings(share_weights=share))
        loaded = used()
        missed = model.warm_up(buckets)
        result[label] = {
            "loaded_gib": (loaded - before) / 2**30,
            "warmed_gib": (used() - before) / 2**30,
            "warm_up_s": time.monotonic() - started,
            "missed": len(missed),
        }
        if share:
            weights = (model.unet.shared, model.vae_decoder.shared)
            result["shared_weights_gib"] = sum(part.nbytes for part in weights if part) / 2**30
        del model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def memory_line(memory: dict[str, Any] | None) -> list[str]:
    """``warm_memory``'s figures as one table line (none where it was not measured)."""
    if not memory:
        return []
    label = f"GPU memory, UNet + VAE warmed at {memory['buckets']} shapes (GiB)"
    return [
        f"{label:46} shared {memory['shared']['warmed_gib']:.2f}, one copy per session "
        f"{memory['per_session']['warmed_gib']:.2f} (weights {memory['shared_weights_gib']:.2f})"
    ]


def pixel_difference(first: Any, second: Any) -> int:
    import numpy as np

    return int(np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16)).max())


def run_bench(args: argparse.Namespace) -> int:
    """Run the whole benchmark; returns the process exit status."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.architecture in SDXL_ARCHITECTURES:
        return run_sdxl_bench(args)
    args.steps = args.steps or 50
    side = 512 if args.architecture == "sd15" else 64
    timer = Timer(args.device)
    report: dict[str, Any] = {"architecture": args.architecture, "device": args.device, "steps": args.steps}
    report["environment"] = environment(args.device)
    src, folder = args.work / "src", args.work / "models" / f"{args.architecture}-gpu"
    started = time.monotonic()
    conversion = None
    if not args.baselines_only:
        conversion = prepare_models(args, src, folder, report)
    elif not (src / "model_index.json").exists():
        report["build_checkpoint_s"] = timed(lambda: write_checkpoint(src, args.architecture))
    pytorch = bench_pytorch(src, args.device, args.steps, side, timer, unet_only=args.baselines_only)
    pipe, reference = pytorch.pop("pipe"), pytorch.pop("unet_output")
    report["pytorch"] = pytorch
    save_report(report, args.out)
    mode = compile_mode(args)
    compiled = CompiledUnet(pipe.unet, mode, args.device, side) if mode != "none" else None
    if compiled is not None:
        compiled.compile(timer)
    if conversion is not None:
        if conversion.wait() != 0:
            raise RuntimeError(f"conversion failed: see {args.out / 'convert.log'}")
        report["convert_s"] = time.monotonic() - started
    # Timed again with nothing else running: the first figures overlapped the conversion.
    pytorch["unet_batch2_after_conversion"] = time_unet(pipe.unet, args.device, side, timer)
    if compiled is not None:
        pytorch["unet_batch2_compiled"] = compiled.time(timer)
    save_report(report, args.out)
    del pipe, compiled
    if args.baselines_only:
        print(format_table(report))
        return 0
    settings = None
    if args.device == "cuda":
        torch.cuda.empty_cache()
        report["gpu_markers"] = json.loads((folder / "gpu.json").read_text())
        settings = bench_cuda_unet(folder, reference, side, timer, args.out, report)
    report["ours"] = bench_ours(folder, settings, args.steps, side, timer, args.device, args.out)
    save_report(report, args.out)
    print(format_table(report))
    return 0


def prepare_models(
    args: argparse.Namespace, src: Path, folder: Path, report: dict[str, Any]
) -> subprocess.Popen[bytes] | None:
    """Build the checkpoint and start its conversion, or reuse both (``--reuse``) when present."""
    from pipelines.models.layout import ONNX_FILE

    if args.reuse and (src / "model_index.json").exists() and (folder / "unet" / ONNX_FILE).exists():
        report["reused_models"] = str(folder)
        return None
    report["build_checkpoint_s"] = timed(lambda: write_checkpoint(src, args.architecture))
    optimize = "gpu" if args.device == "cuda" else "none"
    report["convert_overlapped_pytorch"] = True
    return start_conversion(src, folder, args.workers, optimize, args.out / "convert.log")


def bench_cuda_unet(
    folder: Path, reference: Any, side: int, timer: Timer, out: Path, report: dict[str, Any]
) -> Any:
    """Time and profile our UNet under ``VARIANTS``; returns the ``GpuSettings`` workers run.

    Those, not the fastest variant's, serve the image timings: the fastest is often within noise
    of the default, and one candidate (tunable ops) picks kernels by timing at run time, which no
    worker does (``docs/gpu.md``, fourth round).
    """
    from pipelines.gpu.runtime import GpuSettings

    variants = bench_unet_variants(folder, reference, side, timer)
    timed_ok = {name: value for name, value in variants.items() if "median_ms" in value}
    best = min(timed_ok, key=lambda name: timed_ok[name]["median_ms"])
    report["unet_variants"], report["best_variant"] = variants, best
    report["profile"] = {}
    for name in (*PROFILED, best):
        session = variants[name].get("session")
        if session is None:
            continue
        listing = out / f"unet-kernels-{'best' if name == best else name.replace('+', '-')}.txt"
        try:
            report["profile"][name] = {**profile_unet(session, side, listing), "listing": listing.name}
        except Exception as err:
            logger.exception("profiling %s failed", name)
            report["profile"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    for value in variants.values():
        value.pop("session", None)
    save_report(report, out)
    return GpuSettings(**VARIANTS[DEFAULT_VARIANT])


def compile_mode(args: argparse.Namespace) -> str:
    """The ``--compile`` mode, defaulting to ``max-autotune`` on CUDA and none on the CPU check run."""
    if args.compile is not None:
        return str(args.compile)
    return "max-autotune" if args.device == "cuda" else "none"


def environment(device: str) -> dict[str, Any]:
    """The card, its clocks and the library versions behind a run's figures."""
    import importlib.metadata

    import torch

    found: dict[str, Any] = {"torch": torch.__version__}
    # Inductor's knobs change what torch.compile's baseline is: any set for the run is recorded.
    found["inductor_environment"] = {
        name: value for name, value in os.environ.items() if name.startswith("TORCHINDUCTOR_")
    }
    for package in ("onnxruntime-gpu", "onnxruntime", "diffusers", "triton"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if device == "cuda":
        found["gpu"] = torch.cuda.get_device_name()
        found["cuda"] = torch.version.cuda
        query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        try:
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            values = [value.strip() for value in smi.stdout.split(",")]
            found["nvidia_smi"] = dict(zip(query.split(","), values, strict=False))
        except (OSError, subprocess.SubprocessError) as err:
            found["nvidia_smi"] = f"unavailable: {err}"[:200]
    return found


def save_report(report: dict[str, Any], out: Path) -> None:
    """Write what is measured so far: a run cut short still leaves its figures."""
    (out / "gpu-bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def format_table(report: dict[str, Any]) -> str:
    """The side-by-side table: ms, ratios to PyTorch eager and torch.compile, TFLOP/s, % of peak."""
    pytorch, ours = report["pytorch"], report.get("ours")
    flops = pytorch["flops_unet_batch2"]
    eager = pytorch["unet_batch2_after_conversion"]["median_ms"]
    compiled_ms = pytorch.get("unet_batch2_compiled", {}).get("median_ms")
    lines = [
        f"{'UNet batch 2 (ms, median)':46} {'ms':>9} {'p10':>8} {'p90':>8} {'x eager':>8} {'x compile':>9} "
        f"{'TFLOP/s':>8} {'%peak':>6}"
    ]
    rows = {
        "PyTorch eager": pytorch["unet_batch2_after_conversion"],
        f"torch.compile({pytorch.get('unet_batch2_compiled', {}).get('mode', 'none')})": pytorch.get(
            "unet_batch2_compiled", {}
        ),
        **{f"ours, {name}": value for name, value in report.get("unet_variants", {}).items()},
    }
    for label, value in rows.items():
        if "median_ms" not in value:
            lines.append(f"{label:46} {'failed' if value else 'not run':>9}")
            continue
        ms = value["median_ms"]
        tflops = flops / ms / 1e9
        against_compiled = f"{compiled_ms / ms:9.2f}" if compiled_ms is not None else f"{'':9}"
        lines.append(
            f"{label:46} {ms:9.2f} {value['p10_ms']:8.2f} {value['p90_ms']:8.2f} {eager / ms:8.2f} "
            f"{against_compiled} {tflops:8.1f} {tflops / PEAK_TFLOPS * 100:6.1f}"
        )
    if ours is None:  # --baselines-only
        return "\n".join(lines)
    image_torch, image_ours = pytorch["image"]["median_ms"], ours["image"]["median_ms"]
    lines.append(f"{'':46} {'PyTorch':>9} {'ours':>8} {'ratio':>8}")
    ratio = image_torch / image_ours
    lines.append(f"{'image, text to PNG bytes (ms)':46} {image_torch:9.1f} {image_ours:8.1f} {ratio:8.2f}")
    if "image_to_pixels" in ours:
        lines.append(f"{'image, text to pixels (ms)':46} {'':9} {ours['image_to_pixels']['median_ms']:8.1f}")
    for source, encodings in ours.get("encodings", {}).items():
        for label, value in encodings.items():
            size = value["bytes"] / 1024
            lines.append(f"{f'encode {source}: {label}':60} {value['median_ms']:7.1f} ms {size:7.0f} KiB")
    lines += memory_line(ours.get("memory"))
    for jobs in BATCH_JOBS:
        torch_rate = pytorch["batching"][str(jobs)]["images_per_s"]
        our_rate = ours["batching"][str(jobs)]["images_per_s"]
        ratio = our_rate / torch_rate
        lines.append(f"{f'images/s, {jobs} jobs batched':46} {torch_rate:9.2f} {our_rate:8.2f} {ratio:8.2f}")
    if "few_step" in ours:
        few = ours["few_step"]
        label = f"{few['steps']}-step image at cfg 1, text to PNG / to pixels (ms)"
        lines.append(
            f"{label:46} {'':9} {few['image']['median_ms']:8.1f} {few['image_to_pixels']['median_ms']:8.1f}"
        )
    if "img2img" in ours:
        graphs, sessions = (ours["img2img"][path]["median_ms"] for path in ("graphs", "sessions"))
        label = f"img2img at {ours['img2img']['strength']}, to pixels: sessions / graphs (ms)"
        if not ours["img2img"]["graphs_taken"]:
            label += " [no GPU: both sessions]"
        lines.append(f"{label:46} {sessions:9.1f} {graphs:8.1f} {sessions / graphs:8.2f}")
    one = ours["batching"]["1"]["images_per_s"]
    lines.append(f"batching gain at 4 jobs (ours): {ours['batching']['4']['images_per_s'] / one:.2f}x")
    lines += scaling_lines(ours.get("unet_batch_scaling"))
    return "\n".join(lines)


def scaling_lines(scaling: dict[str, Any] | None) -> list[str]:
    """``unet_batch_scaling``'s rows: each warmed shape's call, then each kernel family per image."""
    if not scaling:
        return []
    # The two shapes are keyed by their jobs ("1", "4"); the rest are derived rows.
    small, large = (scaling[key] for key in sorted((key for key in scaling if key.isdigit()), key=int))
    lines = [
        f"UNet replay, batch {small['rows']} / {large['rows']} (ms per call): "
        f"{small['call']['median_ms']:.2f} / {large['call']['median_ms']:.2f}; kernels "
        f"{small['kernel_ms_per_call']:.2f} / {large['kernel_ms_per_call']:.2f}; "
        f"per-image gain {scaling['per_image_gain']:.2f}x",
        f"{'  kernel family, ms per image':46} {'batch ' + str(small['rows']):>9} "
        f"{'batch ' + str(large['rows']):>8} {'gain':>8}",
    ]
    for name, row in scaling["families"].items():
        lines.append(
            f"{'  ' + name:46} {row['ms_per_image_small']:9.3f} {row['ms_per_image_large']:8.3f} "
            f"{row['gain']:8.2f}"
        )
    return lines


def sdxl_unet_inputs(device: str, dtype: Any, side: int, hidden: int, pooled: int) -> dict[str, Any]:
    """Random inputs of one guided SDXL UNet call (batch 2) at ``side`` pixels, by ONNX input name."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(7)
    return {
        "sample": torch.randn((2, 4, side // 8, side // 8), generator=generator).to(device, dtype),
        "timestep": torch.full((2,), 981.0).to(device),
        "encoder_hidden_states": torch.randn((2, 77, hidden), generator=generator).to(device, dtype),
        "text_embeds": torch.randn((2, pooled), generator=generator).to(device, dtype),
        "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2, dtype=torch.float32).to(device, dtype),
    }


def time_pytorch_sdxl_unet(
    pipe: Any, device: str, dtype: Any, side: int, timer: Timer
) -> tuple[dict[str, Any], Callable[[], Any]]:
    """diffusers' SDXL UNet call at batch 2: its FLOPs and timing, and the call itself."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    feeds = sdxl_unet_inputs(
        device, dtype, side, unet.config.cross_attention_dim, pipe.text_encoder_2.config.projection_dim
    )

    def call() -> Any:
        with torch.no_grad():
            added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]}
            return unet(
                feeds["sample"],
                feeds["timestep"],
                feeds["encoder_hidden_states"],
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    result: dict[str, Any] = {"flops_unet_batch2": float(counter.get_total_flops())}
    result["unet_batch2"] = summary(timer.events(call, 20))
    return result, call


def pytorch_sdxl_image(pipe: Any, side: int, steps: int) -> Any:
    """One image from diffusers' SDXL pipeline with the benchmark's prompt and seed."""
    import torch

    return pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=side,
        width=side,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]


def bench_pytorch_sdxl(src: Path, device: str, steps: int, side: int, timer: Timer) -> dict[str, Any]:
    """diffusers' StableDiffusionXLPipeline in fp16 (fp32 on CPU): the UNet call and one image."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pipelines.imageops.metadata import encode_image

    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe: Any = StableDiffusionXLPipeline.from_pretrained(src, torch_dtype=dtype, add_watermarker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    result, call = time_pytorch_sdxl_unet(pipe, device, dtype, side, timer)
    result["unet_output"] = call().float()

    def image() -> bytes:
        picture = pytorch_sdxl_image(pipe, side, steps)
        return encode_image(picture, {"params": {}}, fmt="png", server_version="bench")

    result["image"] = summary(timer.wall(image, 3))
    return result


def bench_ours_sdxl(folder: Path, steps: int, side: int, timer: Timer, device: str) -> dict[str, Any]:
    """Our SDXL path (``txt2img_sdxl``), text to PNG bytes; on CUDA after capturing the 1-image shapes."""
    from pipelines.diffusion.model import load_model
    from pipelines.gpu.runtime import Bucket, GpuSettings, gpu_model
    from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER, SessionCache, SessionSettings

    providers = (CUDA_PROVIDER, CPU_PROVIDER) if device == "cuda" else (CPU_PROVIDER,)
    model = load_model(folder.parent, folder.name, SessionCache(2, SessionSettings(providers=providers)))
    result: dict[str, Any] = {}
    if device == "cuda":
        result["warm_up_s"] = timed(lambda: gpu_model(folder, GpuSettings()).warm_up([Bucket(side, side)]))
    time_sdxl_images(model, folder.name, side, steps, timer, result)
    return result


def time_sdxl_images(
    model: Any, name: str, side: int, steps: int, timer: Timer, result: dict[str, Any]
) -> Any:
    """Time our SDXL image, text to PNG bytes: the first (``first_image_s``) and three more (``image``).

    Returns the ``Generation`` it timed, for callers that measure more of it.
    """
    from pipelines.diffusion.model import Run
    from pipelines.diffusion.sdxl import txt2img_sdxl
    from pipelines.imageops.metadata import encode_image

    generation = bench_generation(name, "euler", side, steps)

    def work() -> bytes:
        picture = txt2img_sdxl(Run(model, generation))[0]
        return encode_image(picture, {"params": {}}, fmt="png", server_version="bench")

    result["first_image_s"] = timed(work)
    result["image"] = summary(timer.wall(work, 3, warmup=0))
    return generation


def bench_unet_sdxl(folder: Path, reference: Any, side: int, timer: Timer) -> dict[str, Any]:
    """Our fused SDXL UNet call (batch 2) on a CUDA graph, and how far it is from PyTorch's output."""
    import torch

    from pipelines.gpu.runtime import CudaSession, GpuSettings
    from pipelines.models.layout import ONNX_FILE

    stream = torch.cuda.Stream()
    session = CudaSession(folder / "unet" / ONNX_FILE, GpuSettings(), stream)
    hidden, pooled = (session.inputs[name].shape[-1] for name in ("encoder_hidden_states", "text_embeds"))
    feeds = sdxl_unet_inputs("cuda", torch.float16, side, int(hidden), int(pooled))
    shapes = {"out_sample": tuple(feeds["sample"].shape)}
    started = time.monotonic()
    captured = session.capture(feeds, shapes)
    ready = time.monotonic() - started
    output = session(feeds, shapes)["out_sample"].float()
    torch.cuda.synchronize()
    difference = (output - reference).abs()
    return {
        **summary(timer.events(partial(session, feeds, shapes), 30, stream)),
        "cuda_graph": captured,
        "load_and_capture_s": ready,
        "max_abs_diff_vs_pytorch": float(difference.max()),
        "rel_l2_vs_pytorch": float(difference.norm() / reference.norm()),
    }


def run_sdxl_bench(args: argparse.Namespace) -> int:
    """The SDXL rows: build, convert (in the background while PyTorch is timed), time ours."""
    import torch

    side = 1024 if args.architecture == "sdxl" else 64
    steps = args.steps or 30
    timer = Timer(args.device)
    report: dict[str, Any] = {"architecture": args.architecture, "device": args.device, "steps": steps}
    report["environment"] = environment(args.device)
    src, folder = args.work / "src", args.work / "models" / f"{args.architecture}-gpu"
    report["build_checkpoint_s"] = timed(lambda: write_checkpoint(src, args.architecture))
    optimize = "gpu" if args.device == "cuda" else "none"
    started = time.monotonic()
    conversion = start_conversion(src, folder, args.workers, optimize, args.out / "convert.log")
    pytorch = bench_pytorch_sdxl(src, args.device, steps, side, timer)
    reference = pytorch.pop("unet_output")
    report["pytorch"] = pytorch
    save_report(report, args.out)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if conversion.wait() != 0:
        raise RuntimeError(f"conversion failed: see {args.out / 'convert.log'}")
    report["convert_s"] = time.monotonic() - started
    if args.device == "cuda":
        report["gpu_markers"] = json.loads((folder / "gpu.json").read_text())
        report["unet"] = bench_unet_sdxl(folder, reference, side, timer)
        save_report(report, args.out)
    report["ours"] = bench_ours_sdxl(folder, steps, side, timer, args.device)
    save_report(report, args.out)
    print(format_sdxl_table(report))
    return 0


def format_sdxl_table(report: dict[str, Any]) -> str:
    """The SDXL rows side by side: UNet ms (with TFLOP/s) and the image from text to PNG."""
    pytorch, ours = report["pytorch"], report["ours"]
    lines = [f"{'measure':44} {'PyTorch':>10} {'ours':>10} {'ratio':>7} {'TFLOP/s':>8}"]
    torch_unet = pytorch["unet_batch2"]["median_ms"]
    if "unet" in report:
        ms = report["unet"]["median_ms"]
        tflops = pytorch["flops_unet_batch2"] / ms / 1e9
        lines.append(
            f"{'SDXL UNet b2, CUDA graph (ms)':44} {torch_unet:10.2f} {ms:10.2f} "
            f"{torch_unet / ms:7.2f} {tflops:8.1f}"
        )
    image_torch, image_ours = pytorch["image"]["median_ms"], ours["image"]["median_ms"]
    label = f"SDXL image, {report['steps']} steps, text to PNG (ms)"
    lines.append(f"{label:44} {image_torch:10.1f} {image_ours:10.1f} {image_torch / image_ours:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.gpu``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

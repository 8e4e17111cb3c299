"""A resolved chain's peak memory, estimated before it runs, so only jobs that fit are admitted.

A worker that runs out of memory takes its jobs down with it (the kernel's OOM killer does not
ask), and the same job handed to the next worker would kill that one too. So the api estimates
each job's peak from its stages and refuses what no live worker can hold, and a worker claims only
jobs that fit it (``jobs.memory``, ``workers.memory_bytes``).

The model errs high and is deliberately simple. For a diffusion stage working on ``w`` x ``h``
pixels (its tile, when it tiles), with ``T = (w/8)(h/8)`` latent positions and ``r = 2 * batch``
UNet rows (the guidance doubles them):

- **CPU**: the UNet's self-attention holds its scores, their exponents and the softmax at once,
  ``3 r H T'^2`` fp32 values; SD 1.x/2.x attend at the full latent size (``T' = T``, 8 heads), SDXL
  first at half size (``T' = T/4``, 10 heads). A 1024x768 txt2img (``T`` = 12,288) needs 29 GB
  for that alone; the CPU worker had grown to 23.8 GB when the kernel killed it on a 24 GB machine.
- **GPU**: the fused fp16 path computes attention in blocks (flash attention), so it grows only
  linearly with ``T``; the convolutions' activations dominate.
- Both: the weights (the model's files, held twice while a session initialises), the VAE decoder
  at the full image size (or its tile with ``tiled_vae``) and the runtime's own overhead.
- MultiDiffusion (the ``panorama`` pipelines) runs the UNet on one window at a time, so its UNet
  terms are those of its largest window (``unet_tile`` pixels, or a region prompt's rectangle grown
  to whole UNet cells), whatever the size of the image; its VAE still sees the whole image.
- The SD x4 upscaler's latents are its input's pixels, not an eighth of them, and its VAE decodes
  each to 4x4 pixels: one 128-pixel tile is 16,384 latent positions, which its UNet attends to at
  half size and its VAE at full size (2.3 and 2.6 GB measured on the demo model, where an estimate
  at an eighth of the pixels said 0.8 GB for the job).

- A model upscaler (Real-ESRGAN, BSRGAN, SwinIR) builds its whole result at the model's own
  scale before resizing it to ``outscale``: a float32 sum and weight of every pixel, then the 8-bit
  image (19 bytes a pixel), so a 4096x4096 upload at outscale 1 holds a 16384x16384 blend (5 GB).
  Its network's widest activations live at its tile times that scale (RRDBNet's upsampling
  convolutions, 64 channels). The api does not open model files, so the scale is taken as 4 (that
  of every upscaler onnx-web offers) unless ``scale`` asks for more.

Images between stages are small next to these and are counted only as a few full-size buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.diffusion.model import LATENT_FACTOR
from pipelines.diffusion.panorama import PANORAMA_PIPELINES, region_tokens, unet_window, view_options
from pipelines.stages import STAGES

#: The kinds of device a worker's memory is counted on: host RAM, or one GPU's memory.
MemoryKind = Literal["cpu", "gpu"]
KINDS: tuple[MemoryKind, ...] = ("cpu", "gpu")
#: The interpreter, ONNX Runtime, its arenas and the queue client, before any model loads.
RUNTIME_BYTES = 700 * 1024**2
#: Weights sit in memory twice while a session initialises (the file's and the graph's copy).
WEIGHT_COPIES = 2
#: Self-attention at the largest latent size: (heads, tokens divisor) per family.
ATTENTION = {"sd": (8, 1), "sdxl": (10, 4)}
#: Attention-sized arrays alive at once on CPU: scores, their exponents, the softmax.
ATTENTION_COPIES = 3
#: Channels of the widest UNet and VAE layers at full latent/image size, and how many such
#: activations are alive at once (skip connections included).
UNET_CHANNELS, UNET_LIVE = 320, 24
VAE_CHANNELS, VAE_LIVE = 128, 6
#: Bytes of a value: fp32 on CPU, fp16 on the fused GPU path.
VALUE_BYTES: Mapping[MemoryKind, int] = {"cpu": 4, "gpu": 2}
#: An RGB float image between stages, and how many are alive at once.
IMAGE_BUFFERS = 4
#: Bytes a model upscaler holds per pixel of its result at the model's scale: a float32 RGB sum
#: and a float32 weight (``pipelines.imageops.tiling.process_tiled``), then the 8-bit image.
UPSCALER_BLEND_BYTES = 3 * 4 + 4 + 3
#: The scale assumed of a model upscaler the api cannot open (onnx-web's are all 4x).
UPSCALER_SCALE = 4
#: Channels of a super-resolution network's layers at its output resolution, and how many such
#: fp32 activations are alive at once (RRDBNet: the upsampled features, its two convolutions).
UPSCALER_CHANNELS, UPSCALER_LIVE = 64, 3


@dataclass(frozen=True)
class Latents:
    """How a diffusion stage's pixels map to its UNet's latents and its VAE's output."""

    #: Pixels of the stage's image per latent position, along a side.
    pixels_per_latent: int = LATENT_FACTOR
    #: Pixels the VAE decodes a latent position to, along a side.
    vae_factor: int = LATENT_FACTOR
    #: Self-attention as in ``ATTENTION``, where the model's family does not decide it.
    attention: tuple[int, int] | None = None
    #: The parameter that names the stage's model.
    model_param: str = "model"


#: Every diffusion stage but the SD x4 upscaler: SD 1.x/2.x and SDXL latents.
SD_LATENTS = Latents()
#: The SD x4 upscaler. Its release attends to itself only at an eighth of its latents' side (the
#: blocks above cross-attend only), the demo model from half: half errs high for the release.
X4_LATENTS = Latents(pixels_per_latent=1, vae_factor=4, attention=(8, 4), model_param="upscale_model")
STAGE_LATENTS = {"upscale-stable-diffusion": X4_LATENTS}


@dataclass(frozen=True)
class StageMemory:
    """The estimated peak of one stage on each kind of device."""

    name: str
    #: The image the stage makes or works on (what it receives, resized by its type's size rule).
    size: tuple[int, int]
    #: Pixels the stage works on at once (its tile, when it tiles).
    work_size: tuple[int, int]
    peak: Mapping[MemoryKind, int]
    #: The image it hands on: ``size`` times the entry's ``outscale``.
    output: tuple[int, int]


@dataclass(frozen=True)
class ChainMemory:
    """The peak of a whole chain: the largest of its stages, per kind of device."""

    stages: tuple[StageMemory, ...]

    def peak(self, kind: MemoryKind) -> int:
        return max((stage.peak[kind] for stage in self.stages), default=RUNTIME_BYTES)

    def largest(self, kind: MemoryKind) -> StageMemory | None:
        """The stage that needs the most on ``kind``."""
        return max(self.stages, key=lambda stage: stage.peak[kind], default=None)

    def largest_output(self) -> StageMemory | None:
        """The stage that hands on the image of the most pixels."""
        return max(self.stages, key=lambda stage: stage.output[0] * stage.output[1], default=None)

    def to_dict(self) -> dict[str, int]:
        """What the job row stores: the peak per kind, as ``jobs.memory``."""
        return {kind: self.peak(kind) for kind in KINDS}


def chain_memory(
    stages: Sequence[Mapping[str, Any]],
    input_size: tuple[int, int],
    *,
    model_bytes: Callable[[str], int],
    family: Callable[[str], str],
) -> ChainMemory:
    """Estimate every stage of a resolved chain, following the image size from stage to stage.

    Args:
        stages: the chain's resolved stage entries (``type``, ``params``, ``tiles``, ``outscale``).
        input_size: the size of the chain's first input image; ``(0, 0)`` when it makes its own.
        model_bytes: the size of a diffusion model's files, by the path the params name.
        family: ``sd`` or ``sdxl`` for a diffusion model, by the same path.
    """
    width, height = input_size
    estimates = []
    for entry in stages:
        params = entry["params"]
        stage_type = STAGES[entry["type"]]
        received = (width, height)
        width, height = stage_type.size(received, params)
        work = (width, height)
        if stage_type.tileable:
            tile = int(entry.get("tiles", max(width, height)))
            work = (min(width, tile), min(height, tile))
        if "image" in stage_type.groups:
            # Tiled, every tile runs at batch 1 (a batch is one tiled pass after another).
            run_params = {**params, "batch": 1} if work != (width, height) else params
            latents = STAGE_LATENTS.get(entry["type"], SD_LATENTS)
            model = params[latents.model_param]
            peak = {
                kind: diffusion_peak(kind, run_params, work, model_bytes(model), family(model), latents)
                for kind in KINDS
            }
        else:
            held = RUNTIME_BYTES + image_bytes(received) + image_bytes((width, height))
            peak = {kind: held for kind in KINDS}
        outscale = int(entry.get("outscale", 1))
        output = (width * outscale, height * outscale)
        if stage_type.model == "upscaling" and "image" not in stage_type.groups:
            asked = params.get("tiles") or entry.get("tiles") or stage_type.max_tile
            tile = min(stage_type.max_tile, int(asked))
            blend, activations = upscaler_bytes(params, (width, height), tile)
            # The blend is host memory; on a GPU worker only the network's activations are the card's.
            peak = {
                "cpu": peak["cpu"] + blend + activations + image_bytes(output),
                "gpu": peak["gpu"] + activations,
            }
        estimates.append(StageMemory(str(entry["name"]), (width, height), work, peak, output))
        width, height = output
    return ChainMemory(tuple(estimates))


def upscaler_bytes(params: Mapping[str, Any], size: tuple[int, int], tile: int) -> tuple[int, int]:
    """What a model upscaler holds beyond its input: its blend of ``size`` at the model's scale, and
    its network's activations at one ``tile`` times that scale."""
    scale = max(UPSCALER_SCALE, int(params.get("scale") or UPSCALER_SCALE))
    width, height = size
    blend = width * height * scale**2 * UPSCALER_BLEND_BYTES
    tile_pixels = min(width, tile) * min(height, tile) * scale**2
    return blend, tile_pixels * UPSCALER_CHANNELS * VALUE_BYTES["cpu"] * UPSCALER_LIVE


def pixel_steps(stages: Sequence[Mapping[str, Any]], memory: ChainMemory) -> int:
    """The work a chain asks for: each stage's image pixels times its scheduler steps (quotas)."""
    return sum(
        estimate.size[0] * estimate.size[1] * STAGES[entry["type"]].estimate(entry["params"])
        for entry, estimate in zip(stages, memory.stages, strict=True)
    )


def diffusion_peak(
    kind: MemoryKind,
    params: Mapping[str, Any],
    work: tuple[int, int],
    weights: int,
    family: str,
    latents: Latents = SD_LATENTS,
) -> int:
    """One diffusion stage's peak: runtime, weights, and the larger of the UNet and VAE passes."""
    batch = int(params.get("batch", 1))
    view = unet_view(params, work)
    tokens = (view[0] // latents.pixels_per_latent) * (view[1] // latents.pixels_per_latent)
    value = VALUE_BYTES[kind]
    heads, divisor = latents.attention or ATTENTION.get(family, ATTENTION["sd"])
    rows = 2 * batch
    if kind == "cpu":
        attention = ATTENTION_COPIES * rows * heads * (tokens // divisor) ** 2 * value
    else:
        attention = rows * heads * (tokens // divisor) * 64 * value * 4
    unet = attention + rows * UNET_CHANNELS * tokens * value * UNET_LIVE
    scale = latents.vae_factor / latents.pixels_per_latent
    decoded = (round(work[0] * scale), round(work[1] * scale))
    vae_size = decoded
    if params.get("tiled_vae"):
        tile = int(params.get("vae_tile", 512))
        vae_size = (min(decoded[0], tile), min(decoded[1], tile))
    vae_tokens = (vae_size[0] // latents.vae_factor) * (vae_size[1] // latents.vae_factor)
    vae = batch * (VAE_CHANNELS * vae_size[0] * vae_size[1] * value * VAE_LIVE)
    if kind == "cpu":
        vae += batch * 2 * vae_tokens**2 * value
    return RUNTIME_BYTES + WEIGHT_COPIES * weights + max(unet, vae) + image_bytes(decoded) * batch


def unet_view(params: Mapping[str, Any], work: tuple[int, int]) -> tuple[int, int]:
    """The pixels one UNet call sees: ``work``, or for MultiDiffusion its largest view in it (its
    window, or a region's, as ``pipelines.diffusion.panorama`` lays them out)."""
    if params.get("pipeline") not in PANORAMA_PIPELINES:
        return work
    window, _ = view_options(params)
    rows, columns = work[1] // LATENT_FACTOR, work[0] // LATENT_FACTOR
    height, width = min(window, rows), min(window, columns)
    try:
        regions, _ = region_tokens(str(params.get("prompt", "")))
    except ValueError:
        # The chain checks prompts before this; if one slipped through, the whole image errs high.
        return work
    for region in regions:
        region_rows, region_columns = region.rectangle.latent
        height = max(height, _length(unet_window(region_rows, rows)))
        width = max(width, _length(unet_window(region_columns, columns)))
    return width * LATENT_FACTOR, height * LATENT_FACTOR


def _length(span: slice) -> int:
    return int(span.stop - span.start)


def image_bytes(size: tuple[int, int]) -> int:
    """The images alive between stages: a few RGB float copies of the current size."""
    return size[0] * size[1] * 3 * 4 * IMAGE_BUFFERS


def gib(size: int) -> str:
    """A byte count in GiB, for messages."""
    return f"{size / 1024**3:.1f} GiB"

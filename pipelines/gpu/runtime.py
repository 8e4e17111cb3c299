"""ONNX models on CUDA: IO binding to torch tensors, CUDA graphs for warmed shapes, warm-up.

A ``CudaSession`` runs one ONNX model on torch CUDA tensors without copies to the host. Each
shape warmed with ``capture`` gets its own static-shape session (its free dimensions fixed, so
every shape computation folds away and all nodes land on CUDA) whose run is recorded once as a
CUDA graph and then replayed on fixed input and output buffers; any other shape runs on one
dynamic session. All of a model's sessions use one copy of its weights on the GPU
(``SharedWeights``). ONNX Runtime launches on the model's own torch stream, so torch work (the
scheduler step) and ONNX Runtime work are ordered by the stream alone, without host round-trips.

Costs that would otherwise land on the first user job (loading, cuDNN's exhaustive convolution
algorithm search, memory arena growth, graph capture) are paid by ``warm_up``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.diffusion.lcm import TIMESTEP_COND
from pipelines.diffusion.model import (
    LATENT_CHANNELS,
    LATENT_FACTOR,
    ONNX_TYPES,
    DiffusionModel,
    UnetCalls,
    input_type,
)
from pipelines.gpu.weights import SharedWeights
from pipelines.models.layout import ONNX_FILE

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
#: Runs before a graph session is captured: ONNX Runtime runs once normally (allocating), captures on
#: the second run and replays from the third.
CAPTURE_RUNS = 3
#: Diffusion models ``gpu_model`` keeps on the GPU besides the warmed ones (least recently used out).
MAX_GPU_MODELS = 2
#: Tokens in one CLIP window.
TOKENS = 77
#: Text encoder components, each warmed once at start: SD's one, SDXL's two.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
#: Replays of each captured variant, alternating, when ``fuse_conv_bias`` is chosen by timing.
CHOICE_REPLAYS = 15


@dataclass(frozen=True)
class GpuSettings:
    """How CUDA sessions are made: device, CUDA graphs, stream sharing and extra EP options."""

    device_id: int = 0
    #: Record warmed shapes as CUDA graphs (else they run on static-shape sessions without graphs).
    cuda_graphs: bool = True
    #: Static-shape sessions per model component.
    max_graphs: int = 8
    #: Load each component's weights on the GPU once for all of its sessions (``SharedWeights``),
    #: instead of once per session: 1.7 GB per warmed SD 1.5 UNet shape, 5 GB per SDXL one.
    share_weights: bool = True
    #: Run ONNX Runtime on the torch stream (no host synchronisation per call).
    shared_stream: bool = True
    #: Each convolution's bias inside cuDNN's fused convolution instead of a separate add kernel
    #: (the CUDA provider's ``fuse_conv_bias``): 1-4% off the SD 1.5 UNet's replay on an H100, 3%
    #: slower on an H200, and a slower session start on both (``docs/gpu.md``, seventh round).
    #: None (the default) chooses per model component by timing both at its first capture
    #: (``CudaSession.capture``): on a full-size UNet it kept the faster, at about 1 s more warm-up
    #: (tenth round).
    fuse_conv_bias: bool | None = None
    #: Extra CUDA execution provider options (``sdpa_kernel``, ...), as strings.
    provider_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bucket:
    """An image size and batch that gets CUDA graphs at warm-up.

    ``images`` counts every image of one UNet batch (several compatible jobs add up); with
    classifier-free guidance the UNet batch is twice that.
    """

    width: int
    height: int
    images: int = 1
    guidance: bool = True
    #: Prompt tokens (77 per window).
    sequence: int = TOKENS

    @property
    def unet_batch(self) -> int:
        return self.images * (2 if self.guidance else 1)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the latents."""
        return self.height // LATENT_FACTOR, self.width // LATENT_FACTOR


def cuda_available() -> bool:
    """Whether torch sees a CUDA device and the installed ONNX Runtime has the CUDA provider."""
    import onnxruntime
    import torch

    return torch.cuda.is_available() and CUDA_PROVIDER in onnxruntime.get_available_providers()


class CudaSession:
    """One ONNX model on the CUDA provider, run on torch CUDA tensors through IO binding."""

    def __init__(self, path: Path, settings: GpuSettings, stream: Any) -> None:
        import onnxruntime
        import torch

        self.path = path
        self.settings = settings
        self.stream = stream
        self.device = torch.device("cuda", settings.device_id)
        self.run_options = onnxruntime.RunOptions()
        if settings.shared_stream:
            # Ordered by the shared stream: the host need not wait for each run.
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._graphs: dict[tuple[tuple[str, tuple[int, ...]], ...], _StaticRun] = {}
        self._lock = threading.Lock()
        #: The ``fuse_conv_bias`` of this model's sessions: the setting, or where that is None, the
        #: variant the first capture timed faster; None until then (fused, as for the dynamic session).
        self.fuse_conv_bias: bool | None = settings.fuse_conv_bias
        #: Median replay in ms of each variant at the first capture, where the setting was None.
        self.fuse_conv_bias_timings: dict[bool, float] = {}
        #: The weights every session of this model uses in place, or None: each session loads its own.
        self.shared: SharedWeights | None = None
        if settings.share_weights:
            self.shared = SharedWeights(path, lambda array: torch.from_numpy(array).to(self.device))
            torch.cuda.synchronize(self.device)  # the copies are done before any session reads them
        try:
            self._dynamic = self._create_session({}, graph=False, fuse_conv_bias=self.fuse_conv_bias)
        except Exception:
            if self.shared is None:
                raise
            # Sharing only saves memory: an ONNX Runtime that refuses the values runs without it.
            logger.exception("%s: the sessions cannot take shared weights; each loads its own", path)
            self.shared = None
            self._dynamic = self._create_session({}, graph=False, fuse_conv_bias=self.fuse_conv_bias)
        self.inputs = {item.name: item for item in self._dynamic.get_inputs()}
        self.outputs = {item.name: item for item in self._dynamic.get_outputs()}

    def dtype(self, name: str) -> Any:
        """The torch dtype of input or output ``name``."""
        import torch

        item = self.inputs.get(name) or self.outputs[name]
        # torch names its dtypes as numpy does.
        return getattr(torch, np.dtype(ONNX_TYPES[item.type]).name)

    def __call__(
        self, inputs: Mapping[str, Any], output_shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, Any]:
        """Run on ``inputs`` (CUDA tensors, cast as the model needs) into outputs of the given shapes.

        A warmed shape replays its CUDA graph and returns its fixed output buffers, which the
        next call of that shape overwrites: consume or copy them first.
        """
        key = _shape_key(inputs)
        static = self._graphs.get(key)
        if static is not None:
            return static.run(inputs)
        return self.run_dynamic(inputs, output_shapes)

    def capture(self, inputs: Mapping[str, Any], output_shapes: Mapping[str, tuple[int, ...]]) -> bool:
        """Make a static-shape session (and CUDA graph) for the shapes of ``inputs``; False if full."""
        key = _shape_key(inputs)
        with self._lock:
            if key in self._graphs:
                return True
            if len(self._graphs) >= self.settings.max_graphs:
                logger.warning("%s: no room for another CUDA graph; %s stays dynamic", self.path, dict(key))
                return False
            try:
                overrides = self._free_dimensions(inputs)
                if self.fuse_conv_bias is None:
                    static = self._choose_fuse_conv_bias(overrides, inputs, output_shapes)
                else:
                    static = self._static_run(overrides, inputs, output_shapes, self.fuse_conv_bias)
            except Exception:
                # Any shape still runs on the dynamic session; a failed capture only costs speed.
                logger.exception("%s: could not capture %s; it stays dynamic", self.path, dict(key))
                return False
            self._graphs[key] = static
            return True

    def _free_dimensions(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Values of the model's named input dimensions, read off the shapes of ``inputs``."""
        values: dict[str, int] = {}
        for name, tensor in inputs.items():
            for dim, size in zip(self.inputs[name].shape, tensor.shape, strict=True):
                if isinstance(dim, str) and values.setdefault(dim, int(size)) != int(size):
                    raise ValueError(f"{self.path}: dimension {dim} is both {values[dim]} and {size}")
        return values

    def _static_run(
        self,
        overrides: Mapping[str, int],
        inputs: Mapping[str, Any],
        output_shapes: Mapping[str, tuple[int, ...]],
        fuse_conv_bias: bool | None,
    ) -> _StaticRun:
        """A static-shape session for ``inputs``' shapes, run ``CAPTURE_RUNS`` times (captured)."""
        session = self._create_session(
            overrides, graph=self.settings.cuda_graphs, fuse_conv_bias=fuse_conv_bias
        )
        static = _StaticRun(self, session, inputs, output_shapes)
        for _ in range(CAPTURE_RUNS):
            static.run(inputs)
        self.stream.synchronize()
        return static

    def _choose_fuse_conv_bias(
        self,
        overrides: Mapping[str, int],
        inputs: Mapping[str, Any],
        output_shapes: Mapping[str, tuple[int, ...]],
    ) -> _StaticRun:
        """Capture ``inputs``' shapes with each convolution's bias fused and separate, time both
        (``median_times``) and keep the faster for this shape and every later one: which wins
        depends on the card (``docs/gpu.md``, seventh round). Both are held while they are timed;
        where only one can be captured (memory), that one is kept untimed."""
        runs: dict[bool, _StaticRun] = {}
        for fuse in (True, False):
            try:
                runs[fuse] = self._static_run(overrides, inputs, output_shapes, fuse)
            except Exception:
                logger.exception("%s: could not capture with fuse_conv_bias %s", self.path, fuse)
        if not runs:
            raise RuntimeError(f"{self.path}: neither fuse_conv_bias variant could be captured")
        timings = {}
        if len(runs) == 2:
            timings = median_times(
                {fuse: partial(run.run, inputs) for fuse, run in runs.items()},
                CHOICE_REPLAYS,
                self.stream.synchronize,
            )
        self.fuse_conv_bias = min(timings, key=timings.__getitem__) if timings else next(iter(runs))
        self.fuse_conv_bias_timings = timings
        how = (
            f"median replay {timings[True]:.3f} ms fused, {timings[False]:.3f} ms separate"
            if timings
            else "the only variant captured"
        )
        logger.info(
            "%s: fuse_conv_bias %s (%s)", self.path.parent.name, "on" if self.fuse_conv_bias else "off", how
        )
        return runs[self.fuse_conv_bias]

    def _create_session(
        self, overrides: Mapping[str, int], *, graph: bool, fuse_conv_bias: bool | None
    ) -> Any:
        """A session with ``overrides`` fixing its free dimensions; ``fuse_conv_bias`` None fuses, as
        ``cuda_provider_options`` reads it."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        for name, value in overrides.items():
            options.add_free_dimension_override_by_name(name, value)
        if self.shared is not None:
            self.shared.add_to(options)
        stream = self.stream.cuda_stream if self.settings.shared_stream else None
        provider = cuda_provider_options(
            replace(self.settings, fuse_conv_bias=fuse_conv_bias), graph=graph, stream=stream
        )
        return onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=[(CUDA_PROVIDER, provider)]
        )

    def run_dynamic(
        self, inputs: Mapping[str, Any], output_shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, Any]:
        """Run on the dynamic session (no CUDA graph), also for a warmed shape: what a replay is
        compared with. Returns new output tensors."""
        import torch

        binding = self._dynamic.io_binding()
        with torch.cuda.stream(self.stream):
            held = {
                name: tensor.to(self.device, self.dtype(name)).contiguous() for name, tensor in inputs.items()
            }
            outputs = {
                name: torch.empty(shape, dtype=self.dtype(name), device=self.device)
                for name, shape in output_shapes.items()
            }
        for name, tensor in held.items():
            _bind(binding.bind_input, name, tensor)
        for name, tensor in outputs.items():
            _bind(binding.bind_output, name, tensor)
        if not self.settings.shared_stream:
            self.stream.synchronize()
        self._dynamic.run_with_iobinding(binding, self.run_options)
        return outputs


def cuda_provider_options(settings: GpuSettings, *, graph: bool, stream: int | None) -> dict[str, str]:
    """The CUDA provider's options for one of a ``CudaSession``'s sessions: exhaustive cuDNN search
    with its largest workspace, ``settings.fuse_conv_bias``, a CUDA graph if ``graph``, the torch
    stream ``stream`` (a ``cudaStream_t`` as an integer) if given; ``settings.provider_options`` last,
    so they override any of these."""
    provider = {
        "device_id": str(settings.device_id),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "fuse_conv_bias": "0" if settings.fuse_conv_bias is False else "1",
    }
    if graph:
        provider["enable_cuda_graph"] = "1"
    if stream is not None:
        provider["user_compute_stream"] = str(stream)
    return {**provider, **settings.provider_options}


def median_times(
    runs: Mapping[Any, Callable[[], object]],
    replays: int,
    synchronize: Callable[[], object],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Any, float]:
    """Median milliseconds of each of ``runs`` over ``replays`` calls, the runs taken in turn so a
    change of clocks or load falls on all of them; ``synchronize`` waits for the GPU's work."""
    elapsed: dict[Any, list[float]] = {key: [] for key in runs}
    for _ in range(replays):
        for key, run in runs.items():
            synchronize()
            started = clock()
            run()
            synchronize()
            elapsed[key].append((clock() - started) * 1000)
    return {key: float(np.median(values)) for key, values in elapsed.items()}


class _StaticRun:
    """A static-shape session bound once to fixed input and output buffers (a CUDA graph's needs)."""

    def __init__(
        self,
        owner: CudaSession,
        session: Any,
        inputs: Mapping[str, Any],
        output_shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        import torch

        self.owner = owner
        self.session = session
        with torch.cuda.stream(owner.stream):
            self.inputs = {
                name: torch.empty(tuple(tensor.shape), dtype=owner.dtype(name), device=owner.device)
                for name, tensor in inputs.items()
            }
            self.outputs = {
                name: torch.empty(shape, dtype=owner.dtype(name), device=owner.device)
                for name, shape in output_shapes.items()
            }
        self.binding = session.io_binding()
        for name, tensor in self.inputs.items():
            _bind(self.binding.bind_input, name, tensor)
        for name, tensor in self.outputs.items():
            _bind(self.binding.bind_output, name, tensor)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        with torch.cuda.stream(self.owner.stream):
            for name, tensor in inputs.items():
                self.inputs[name].copy_(tensor, non_blocking=True)
        if not self.owner.settings.shared_stream:
            self.owner.stream.synchronize()
        self.session.run_with_iobinding(self.binding, self.owner.run_options)
        return self.outputs


def _bind(method: Any, name: str, tensor: Any) -> None:
    """Bind a torch CUDA tensor to an ONNX input or output by address."""
    import numpy as np

    numpy_type = {"float16": np.float16, "float32": np.float32, "int32": np.int32, "int64": np.int64}
    dtype = numpy_type[str(tensor.dtype).removeprefix("torch.")]
    method(name, "cuda", tensor.device.index or 0, dtype, tuple(tensor.shape), tensor.data_ptr())


def _shape_key(inputs: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((name, tuple(int(size) for size in tensor.shape)) for name, tensor in inputs.items()))


class GpuDiffusionModel:
    """The UNet and VAE decoder of one diffusion model folder on the GPU, on one torch stream."""

    def __init__(self, folder: Path, settings: GpuSettings) -> None:
        import torch

        self.folder = folder
        self.settings = settings
        self.device = torch.device("cuda", settings.device_id)
        self.stream = torch.cuda.Stream(self.device)
        self.unet = CudaSession(folder / "unet" / ONNX_FILE, settings, self.stream)
        self.vae_decoder = CudaSession(folder / "vae_decoder" / ONNX_FILE, settings, self.stream)
        cond = self.unet.inputs.get(TIMESTEP_COND)
        #: Width of an LCM-distilled UNet's guidance embedding (``timestep_cond``); ``None`` for others.
        self.cond_size = int(cond.shape[-1]) if cond is not None else None
        #: Whether ``warm_up`` captured a shape: graphs are captured only then, so ``gpu_model``
        #: never unloads such a model.
        self.warmed = False

    def predict_noise(self, sample: Any, timestep: Any, conditioning: Mapping[str, Any]) -> Any:
        """One UNet call on CUDA tensors: the noise prediction, as an fp32 tensor of its own.

        ``conditioning`` holds the UNet's other inputs by name, one row per ``sample`` row:
        ``encoder_hidden_states``, SDXL's ``text_embeds`` and ``time_ids``, an LCM-distilled UNet's
        embedded guidance scale (``timestep_cond``). A warmed shape's output buffer is overwritten
        by its next replay, and schedulers keep model outputs across steps (PNDM's history), so the
        result is always a copy, made in the conversion to fp32 that a fp16 UNet needs anyway.
        """
        import torch

        batch, _, height, width = sample.shape
        feeds = {"sample": sample, "timestep": timestep, **conditioning}
        outputs = self.unet(feeds, {"out_sample": (batch, LATENT_CHANNELS, height, width)})
        return outputs["out_sample"].to(torch.float32, copy=True)

    def decode(self, latents: Any) -> Any:
        """Decode one ``(1, 4, h, w)`` latent (already divided by the scaling factor) to [-1, 1] pixels."""
        _, _, height, width = latents.shape
        outputs = self.vae_decoder(
            {"latent_sample": latents}, {"sample": (1, 3, height * LATENT_FACTOR, width * LATENT_FACTOR)}
        )
        return outputs["sample"]

    def decode_images(self, latents: Any, scaling_factor: float) -> list[Image.Image]:
        """Decode ``(n, 4, h, w)`` latents one at a time and bring back 8-bit pixels, rounded as
        ``decode_latents`` rounds them."""
        import torch

        images = []
        for index in range(len(latents)):
            pixels = self.decode(latents[index : index + 1] / scaling_factor).float()
            pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            images.append(Image.fromarray(pixels[0].permute(1, 2, 0).cpu().numpy()))
        return images

    def warm_up(self, buckets: Sequence[Bucket]) -> list[Bucket]:
        """Capture the UNet and VAE decoder at each bucket's shapes, paying first-run costs now.

        Every input the UNet takes gets a tensor (``unet_feed_shapes``): SDXL's pooled text and
        size conditioning, an inpainting UNet's 9 channels. An LCM-distilled UNet never runs
        guidance rows (its guidance scale is embedded), so its buckets are captured without them.
        Returns the buckets that could not be captured: they still run, without a CUDA graph.
        """
        import torch

        if self.cond_size is not None:
            buckets = [replace(bucket, guidance=False) for bucket in buckets]
        missed = []
        with torch.cuda.stream(self.stream):
            for bucket in buckets:
                feeds = warm_feeds(self.unet.inputs, bucket, self.device)
                latent_h, latent_w = bucket.latent_size
                rows = bucket.unet_batch
                unet = self.unet.capture(feeds, {"out_sample": (rows, LATENT_CHANNELS, latent_h, latent_w)})
                latent = torch.randn((1, LATENT_CHANNELS, latent_h, latent_w), device=self.device)
                decoder = self.vae_decoder.capture(
                    {"latent_sample": latent}, {"sample": (1, 3, bucket.height, bucket.width)}
                )
                if not (unet and decoder):
                    missed.append(bucket)
        self.stream.synchronize()
        self.warmed = self.warmed or len(missed) < len(buckets)
        logger.info("warmed %s for %s", self.folder.name, [bucket.__dict__ for bucket in buckets])
        return missed


#: Width of SDXL's size conditioning per UNet row: original size, crop origin, target size.
TIME_IDS = 6
#: The UNet inputs besides the sample and timestep that the CUDA-graph path feeds: SD's text
#: states, SDXL's pooled text and size conditioning, an LCM-distilled UNet's guidance embedding.
CONDITIONING_INPUTS = ("encoder_hidden_states", "text_embeds", "time_ids", TIMESTEP_COND)


def unet_feed_shapes(inputs: Mapping[str, Any], bucket: Bucket) -> dict[str, tuple[int, ...]]:
    """The shape of each UNet input at ``bucket``, read off the UNet's inputs (``NodeArg``s).

    SD's ``sample`` (9 channels for an inpainting UNet), ``timestep`` and ``encoder_hidden_states``;
    SDXL's ``text_embeds`` and ``time_ids``; an LCM-distilled UNet's ``timestep_cond``. Raises
    ``ValueError`` for an input it does not know, or one whose width the graph leaves open.
    """
    rows = bucket.unet_batch
    latent_h, latent_w = bucket.latent_size

    def size(name: str, axis: int, default: int | None = None) -> int:
        value = inputs[name].shape[axis]
        if isinstance(value, int):
            return value
        if default is None:
            raise ValueError(f"the UNet's {name} has no fixed size on axis {axis} ({value})")
        return default

    shapes = {
        "sample": (rows, size("sample", 1, LATENT_CHANNELS), latent_h, latent_w),
        "timestep": (rows,),
        "encoder_hidden_states": (rows, bucket.sequence, size("encoder_hidden_states", -1, 768)),
    }
    widths = {"text_embeds": None, "time_ids": TIME_IDS, TIMESTEP_COND: None}
    for name in inputs:
        if name in shapes:
            continue
        if name not in CONDITIONING_INPUTS:
            raise ValueError(f"cannot warm up a UNet that takes {name!r}")
        shapes[name] = (rows, size(name, -1, widths[name]))
    return shapes


def warm_feeds(inputs: Mapping[str, Any], bucket: Bucket, device: Any) -> dict[str, Any]:
    """Tensors on ``device`` for every UNet input at ``bucket`` (``unet_feed_shapes``): random,
    but for a mid-schedule timestep and the bucket's own size as SDXL's ``time_ids``."""
    import torch

    feeds = {}
    for name, shape in unet_feed_shapes(inputs, bucket).items():
        if name == "timestep":
            feeds[name] = torch.full(shape, 500.0, device=device)
        elif name == "time_ids":
            sizes = [bucket.height, bucket.width, 0, 0, bucket.height, bucket.width]
            feeds[name] = torch.tensor([sizes] * shape[0], dtype=torch.float32, device=device)
        else:
            feeds[name] = torch.randn(shape, device=device)
    return feeds


_models: OrderedDict[tuple[Path, str], GpuDiffusionModel] = OrderedDict()
_models_lock = threading.Lock()


def gpu_model(folder: Path, settings: GpuSettings) -> GpuDiffusionModel:
    """The model ``folder`` on the GPU, loaded once per worker and kept.

    Warmed models (the worker's ``ONNX_WEB_WARM_MODELS``) stay for the worker's life: their CUDA
    graphs are captured only at start. Of the others, the ``MAX_GPU_MODELS`` used last stay.
    """
    key = (Path(folder).resolve(), repr(settings))
    with _models_lock:
        model = _models.get(key)
        if model is None:
            model = _models[key] = GpuDiffusionModel(key[0], settings)
            spare = [known for known, loaded in _models.items() if not loaded.warmed]
            for evicted in spare[: max(0, len(spare) - MAX_GPU_MODELS)]:
                del _models[evicted]
                logger.info("unloaded %s from the GPU", evicted[0].name)
        _models.move_to_end(key)
        return model


def loaded_model(folder: Path, settings: GpuSettings) -> GpuDiffusionModel | None:
    """The model ``folder`` if it is on the GPU already (``gpu_model`` loaded it), else None."""
    with _models_lock:
        return _models.get((Path(folder).resolve(), repr(settings)))


def device_memory_used(device_id: int) -> int:
    """Bytes in use on CUDA device ``device_id`` by every process on it, as ``nvidia-smi`` counts."""
    import torch

    free, total = torch.cuda.mem_get_info(device_id)
    return int(total - free)


def gpu_settings(sessions: Any) -> GpuSettings | None:
    """GPU settings for a worker's session provider, or None when it does not run on CUDA here."""
    settings = getattr(sessions, "settings", None)
    providers = getattr(settings, "providers", ())
    if CUDA_PROVIDER not in providers or not cuda_available():
        return None
    return GpuSettings(
        device_id=int(getattr(settings, "device_id", 0)),
        fuse_conv_bias=getattr(settings, "cuda_fuse_conv_bias", None),
    )


def graph_model(model: DiffusionModel, *, load: bool = True) -> GpuDiffusionModel | None:
    """``model`` on this worker's GPU for the CUDA-graph path, or None where its runs stay on the
    worker's sessions: no CUDA here, or a LoRA in the run (it is blended into the sessions' UNet;
    the GPU model is the folder's own). ``load=False`` takes it only if it is on the GPU already."""
    settings = gpu_settings(model.sessions)
    if settings is None or model.networks.variant("unet") is not None:
        return None
    return gpu_model(model.folder, settings) if load else loaded_model(model.folder, settings)


def graph_calls(model: DiffusionModel, inputs: Mapping[str, np.ndarray]) -> UnetCalls | None:
    """A run's UNet calls on the CUDA-graph path (``graph_model``), or None where they stay on the
    sessions, also for an input other than ``CONDITIONING_INPUTS`` (the x4 upscaler's
    ``class_labels``). ``inputs`` are the UNet's inputs besides the sample and timestep, one row
    per UNet row; they go to the GPU once per run."""
    if set(inputs) - set(CONDITIONING_INPUTS):
        return None
    on_gpu = graph_model(model)
    if on_gpu is None:
        return None
    import torch

    with torch.cuda.stream(on_gpu.stream):
        conditioning = {name: torch.from_numpy(array).to(on_gpu.device) for name, array in inputs.items()}

    def predict(model_input: Any, t: Any) -> Any:
        timestep = torch.full((len(model_input),), float(t), device=on_gpu.device)
        return on_gpu.predict_noise(model_input, timestep, conditioning)

    return UnetCalls(predict, on_gpu.device, lambda: torch.cuda.stream(on_gpu.stream))


def graph_decode(model: DiffusionModel, latents: np.ndarray) -> list[Image.Image] | None:
    """``latents`` decoded on the VAE decoder's CUDA graphs (``graph_model``), or None off that
    path: also where the model is not on the GPU already (a run whose UNet loop ran on the sessions,
    pix2pix's or a ControlNet's, does not load a whole GPU model to decode), or for a VAE that does
    not scale by 8 (the x4 upscaler's)."""
    if model.vae_factor != LATENT_FACTOR:
        return None
    on_gpu = graph_model(model, load=False)
    if on_gpu is None:
        return None
    import torch

    with torch.cuda.stream(on_gpu.stream):
        return on_gpu.decode_images(torch.from_numpy(latents).to(on_gpu.device), model.scaling_factor)


def warm_up(model: DiffusionModel, buckets: Sequence[Bucket]) -> list[Bucket]:
    """Load ``model`` on the GPU and capture ``buckets``: the worker calls this at start.

    Also runs each text encoder once (SDXL's two), so its session is created and its memory arena
    grown before the first job. Returns the buckets that could not be captured (logged).
    """
    settings = gpu_settings(model.sessions)
    if settings is None:
        raise RuntimeError("warm_up needs a CUDA session provider and a GPU")
    missed = gpu_model(model.folder, settings).warm_up(buckets)
    if missed:
        logger.warning(
            "%s: no CUDA graph for %s; those shapes run without one",
            model.folder.name,
            [bucket.__dict__ for bucket in missed],
        )
    for component in TEXT_ENCODERS:
        if (model.folder / component / ONNX_FILE).is_file():
            session = model.session(component)
            for sequence in sorted({bucket.sequence for bucket in buckets}):
                ids = np.zeros((sequence // TOKENS, TOKENS), dtype=np.int64)
                session.run(None, {"input_ids": ids.astype(input_type(session, "input_ids", np.int32))})
    return missed

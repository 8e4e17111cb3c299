"""ONNX Runtime sessions: a factory with the worker's provider settings and a bounded cache.

A worker keeps models warm between jobs. Sessions are cached by file path; the unit of
eviction is a *model*, because a diffusion model is four sessions that are always used together
(a diffusers folder, recognised by its ``model_index.json``), while an upscaler is a single file.

A session may be a *variant* of its file: the same graph with some weights replaced in memory
(LoRAs and textual inversions, ``pipelines.diffusion.networks``). The file is never rewritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: Names accepted for ``SessionOptions.graph_optimization_level``.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: The graph optimizer that ignores ``add_initializer`` weights (see ``create_session``).
NCHWC_TRANSFORMER = "NchwcTransformer"


@dataclass(frozen=True)
class SessionSettings:
    """How sessions are created: which providers, how many threads, how much graph optimisation."""

    #: Providers in order of preference; those the installed ONNX Runtime lacks are skipped.
    providers: Sequence[str] = (CUDA_PROVIDER, CPU_PROVIDER)
    #: Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    intra_op_threads: int = 0
    #: One of ``OPTIMIZATION_LEVELS``.
    optimization: str = "all"
    #: CUDA device index, when the CUDA provider is used.
    device_id: int = 0
    #: Whether the CUDA-graph runtime (``pipelines.gpu.runtime``) fuses each convolution's bias into
    #: cuDNN's convolution (``GpuSettings.fuse_conv_bias``; None, the default: chosen by timing at
    #: warm-up); these sessions leave ONNX Runtime's default.
    cuda_fuse_conv_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {OPTIMIZATION_LEVELS}, not {self.optimization!r}")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads must be >= 0")


@dataclass(frozen=True)
class Initializers:
    """Weights that replace a graph's own in memory when its session is created."""

    #: Same shape as the graph's: handed to ONNX Runtime (``SessionOptions.add_initializer``), so
    #: the file is read as usual and only these weights are held twice.
    same_shape: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: Another shape (a token embedding grown by inversions): written into an in-memory copy of the
    #: graph, which is then built from bytes (graphs under 2 GB only, as a text encoder is).
    reshaped: Mapping[str, np.ndarray] = field(default_factory=dict)


class SessionVariant(Protocol):
    """A change to one file's weights: ``key`` tells variants apart, ``initializers`` builds it."""

    @property
    def key(self) -> Hashable: ...

    def initializers(self, path: Path) -> Initializers: ...


def available_providers(settings: SessionSettings) -> list[str]:
    """The requested providers that this ONNX Runtime build offers, CPU as the last resort."""
    import onnxruntime

    installed = set(onnxruntime.get_available_providers())
    chosen = [provider for provider in settings.providers if provider in installed]
    if not chosen:
        logger.warning(
            "none of the providers %s is available; using %s", list(settings.providers), CPU_PROVIDER
        )
        chosen = [CPU_PROVIDER]
    return chosen


def create_session(
    path: Path, settings: SessionSettings | None = None, initializers: Initializers | None = None
) -> Any:
    """Load one ONNX model as an ``onnxruntime.InferenceSession`` with ``settings``.

    ``initializers`` replace weights of the graph in memory; ``path`` is only read.
    """
    import onnxruntime

    settings = settings or SessionSettings()
    providers: list[Any] = [
        (provider, {"device_id": settings.device_id}) if provider == CUDA_PROVIDER else provider
        for provider in available_providers(settings)
    ]
    on_cuda = providers[0] != CPU_PROVIDER
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    # The CPU arena keeps every session's largest run for the session's life, about twice what the
    # run needed (it grows by doubling): the x4 upscaler's UNet and VAE at one 128-pixel tile held
    # 4.4 GB each after a run that needed 2.3 and 2.6 GB without it. A worker then held the sum of
    # every cached session's peak (9.5 GB after one upscale, 15.7 GB after the next job, estimated
    # at 0.8 and 4.0 GB). Without it a run's memory goes back when the run ends, so a job's peak is
    # its own largest run, as ``pipelines.memory`` estimates; steps of the demo UNet ran up to 1.7
    # times slower, the pages of each run's tensors being mapped afresh.
    options.enable_cpu_mem_arena = on_cuda
    options.graph_optimization_level = {
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    logger.debug("loading %s on %s", path, providers)
    if initializers is None:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    buffers = initializer_buffers(initializers.same_shape, settings.device_id if on_cuda else None)
    for name, (value, _) in zip(initializers.same_shape, buffers, strict=True):
        options.add_initializer(name, value)
    model: str | bytes = str(path)
    if initializers.reshaped:
        model = graph_with(path, initializers.reshaped)
    # The CPU provider's NCHWc layout pass (level "all") builds its Conv weights from the file's
    # initializers, not the ones added here (seen with ORT 1.32): a blended Conv would run with its
    # base weights. Without it a UNet step measured the same, within noise.
    session = onnxruntime.InferenceSession(
        model, sess_options=options, providers=providers, disabled_optimizers=[NCHWC_TRANSFORMER]
    )
    # ONNX Runtime reads these buffers for the session's whole life but does not own them: they
    # must live exactly as long as the session, whoever holds it after the cache lets go.
    session.initializer_buffers = buffers
    return session


def initializer_buffers(values: Mapping[str, np.ndarray], cuda_device: int | None) -> list[tuple[Any, Any]]:
    """``(OrtValue, the memory it wraps)`` for each of ``values``, for ``SessionOptions.add_initializer``.

    ONNX Runtime uses an added initializer only if it already lives where the session keeps that
    weight: a CUDA session given host memory logs "Cannot use user supplied initializer" and keeps
    the file's weight (onnxruntime-gpu 1.31.1, seen on an H100), so a LoRA changed nothing on GPUs.
    It also refuses CUDA memory it allocated itself ("must be owned by the user"). On CUDA
    (``cuda_device``) the values are therefore copied to tensors that torch allocates on that
    device and handed over through DLPack; elsewhere (or with no GPU for torch, where ONNX Runtime
    falls back to the CPU too) numpy's memory is wrapped as it is.
    """
    import onnxruntime
    import torch

    if cuda_device is None or not torch.cuda.is_available():
        hosts = [np.ascontiguousarray(value) for value in values.values()]
        return [(onnxruntime.OrtValue.ortvalue_from_numpy(host), host) for host in hosts]

    device = torch.device("cuda", cuda_device)
    tensors = [torch.from_numpy(np.ascontiguousarray(value)).to(device) for value in values.values()]
    return [(onnxruntime.OrtValue.from_dlpack(tensor), tensor) for tensor in tensors]


def graph_with(path: Path, replaced: Mapping[str, np.ndarray]) -> bytes:
    """The serialized graph of ``path`` (external data included) with ``replaced`` initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in replaced:
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(replaced[tensor.name], tensor.name)
            )
    serialized: bytes = model.SerializeToString()
    return serialized


def model_root(path: Path) -> Path:
    """The model a session file belongs to: the enclosing diffusers folder, else the file itself."""
    for parent in path.parents:
        if (parent / "model_index.json").is_file():
            return parent
    return path


class SessionCache:
    """A least-recently-used cache of sessions that holds at most ``max_models`` models.

    Implements ``pipelines.context.SessionProvider``. Safe to share between threads: loading
    happens under the lock, so two stages never load the same file twice.

    ``loads`` counts the model loads (a model whose first session was created: a diffusion
    folder's four sessions are one load); ``on_load(model_root, seconds)`` is told of each session
    created, so a worker can count and time loads without this layer knowing how.

    ``get(path, variant)`` gives the session of ``path`` with ``variant``'s weights. A file holds
    one session at a time: a UNet is gigabytes, so a new variant (another LoRA, another weight, or
    none) replaces the file's previous one rather than joining it, as onnx-web reloads its pipeline.
    """

    def __init__(
        self,
        max_models: int,
        settings: SessionSettings | None = None,
        *,
        on_load: Callable[[Path, float], None] | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be >= 1")
        self.max_models = max_models
        self.settings = settings or SessionSettings()
        self.loads = 0
        self._on_load = on_load
        # model root -> (file path -> (variant key, session)); both levels least- to most-recent.
        self._models: OrderedDict[Path, OrderedDict[Path, tuple[Hashable, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, variant: SessionVariant | None = None) -> Any:
        """The session for ``path`` with ``variant``, loaded (the oldest model evicted) when needed."""
        path = Path(path).resolve()
        root = model_root(path)
        key = None if variant is None else variant.key
        with self._lock:
            sessions = self._models.get(root)
            held = None if sessions is None else sessions.get(path)
            if held is not None and held[0] == key:
                self._models.move_to_end(root)
                return held[1]
            started = time.monotonic()
            initializers = None if variant is None else variant.initializers(path)
            session = create_session(path, self.settings, initializers)
            if self._on_load is not None:
                self._on_load(root, time.monotonic() - started)
            if sessions is None:
                self.loads += 1
                sessions = self._models[root] = OrderedDict()
            sessions[path] = (key, session)
            self._models.move_to_end(root)
            while len(self._models) > self.max_models:
                evicted, _ = self._models.popitem(last=False)
                logger.info("unloaded model %s", evicted.name)
            return session

    def held_models(self, models_path: Path) -> list[str]:
        """Names (relative to ``models_path``) of the loaded models, most recently used first.

        Single-file models are named without ``.onnx``, as requests name them
        (``upscaling-real-esrgan-x4-plus``).
        """
        base = Path(models_path).resolve()
        with self._lock:
            roots = list(reversed(self._models))
        return [
            (root.with_suffix("") if root.suffix == ".onnx" else root).relative_to(base).as_posix()
            for root in roots
            if root.is_relative_to(base)
        ]

    def clear(self) -> None:
        """Drop every session (ONNX Runtime frees their memory once no stage holds them)."""
        with self._lock:
            self._models.clear()

    def drop(self, path: Path) -> int:
        """Drop the sessions of the model at ``path`` (a folder or a file) and of any model below it.

        A model removed or replaced on disk must not keep serving from sessions of its old files;
        the other models' sessions stay. Returns how many models were dropped.
        """
        target = Path(path).resolve()
        with self._lock:
            gone = [root for root in self._models if root == target or root.is_relative_to(target)]
            for root in gone:
                del self._models[root]
        return len(gone)

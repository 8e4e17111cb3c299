"""ONNX Runtime sessions: a factory with the worker's provider settings and a bounded cache.

A worker keeps models warm between jobs. Sessions are cached by file path; the unit of
eviction is a *model*, because a diffusion model is four sessions that are always used together
(a diffusers folder, recognised by its ``model_index.json``), while an upscaler is a single file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: Names accepted for ``SessionOptions.graph_optimization_level``.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


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

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {OPTIMIZATION_LEVELS}, not {self.optimization!r}")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads must be >= 0")


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


def create_session(path: Path, settings: SessionSettings | None = None) -> Any:
    """Load one ONNX model as an ``onnxruntime.InferenceSession`` with ``settings``."""
    import onnxruntime

    settings = settings or SessionSettings()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.graph_optimization_level = {
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    providers: list[Any] = [
        (provider, {"device_id": settings.device_id}) if provider == CUDA_PROVIDER else provider
        for provider in available_providers(settings)
    ]
    logger.debug("loading %s on %s", path, providers)
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)


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
        # model root -> (file path -> session); both levels in least- to most-recent order.
        self._models: OrderedDict[Path, OrderedDict[Path, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Any:
        """The session for ``path``, loading it (and evicting the oldest model) when needed."""
        path = Path(path).resolve()
        root = model_root(path)
        with self._lock:
            sessions = self._models.get(root)
            if sessions is not None and path in sessions:
                self._models.move_to_end(root)
                return sessions[path]
            started = time.monotonic()
            session = create_session(path, self.settings)
            if self._on_load is not None:
                self._on_load(root, time.monotonic() - started)
            if sessions is None:
                self.loads += 1
                sessions = self._models[root] = OrderedDict()
            sessions[path] = session
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

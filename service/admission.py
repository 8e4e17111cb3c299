"""Memory admission: a job is accepted only when a live worker can hold its estimated peak.

The estimate (``pipelines.memory``) is stored with the job, and workers claim only jobs that fit
them, so a job too large for one kind of worker still runs on another. What no live worker can
hold is refused at submit, naming the estimate, the limit and the stage that needs the most,
instead of being queued to kill worker after worker. With no live worker that announced its
memory (all scaled to zero, or capacity unknown), ``ONNX_WEB_MAX_JOB_MEMORY`` is the limit when
set; otherwise the job is queued.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from pipelines.memory import ChainMemory, MemoryKind, chain_memory, gib
from pipelines.models.registry import ModelRegistry
from service.capacity import memory_kind
from service.chains import BuiltChain
from service.config import Config
from service.errors import InvalidParams
from service.jobs.store import JobStore

#: How long the live workers' capacities are reused between submissions.
CAPACITY_CACHE_S = 5.0
#: The request parameter that sizes a legacy route's stage, by the stage's name prefix.
SIZED_BY = (
    ("highres", "highresScale"),
    ("upscale", "outscale"),
    ("correct", "faceOutscale"),
    ("expand", "left/right/top/bottom"),
)


class Admission:
    """Estimates a built chain's memory and refuses it when no live worker can hold it."""

    def __init__(self, config: Config, jobs: JobStore, registry: ModelRegistry, live_window_s: float) -> None:
        self.config = config
        self.jobs = jobs
        self.registry = registry
        self.live_window_s = live_window_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int | None]] = (0.0, {})

    def estimate(self, built: BuiltChain, input_size: tuple[int, int]) -> ChainMemory:
        """The chain's peak per device kind, following the image from ``input_size``."""
        return chain_memory(
            built.chain["stages"],
            input_size,
            model_bytes=self.registry.model_bytes,
            family=self.registry.family,
        )

    def admit(
        self, memory: ChainMemory, platform: str | None, paths: Mapping[str, str] | None = None
    ) -> None:
        """Raise ``InvalidParams`` when a stage would make an image over ``max_output_pixels``, or
        when no live worker of ``platform`` (any, if None) can hold ``memory``."""
        self.check_output(memory, paths)
        capacities = self.capacities()
        if platform is not None:
            capacities = {name: limit for name, limit in capacities.items() if name == platform}
        if None in capacities.values():
            return  # a live worker of unknown capacity may take it, as before capacities existed
        limits = {name: limit for name, limit in capacities.items() if limit is not None}
        if not limits and self.config.max_job_memory is not None:
            limits = {"configured": self.config.max_job_memory}
        if not limits:
            return
        kinds: dict[str, MemoryKind] = {name: memory_kind(name) for name in limits}
        kinds["configured"] = memory_kind(self.config.worker_platform)
        if any(memory.peak(kinds[name]) <= limit for name, limit in limits.items()):
            return
        name, limit = max(limits.items(), key=lambda item: item[1])
        stage = memory.largest(kinds[name])
        assert stage is not None
        where = f"{paths[stage.name]}" if paths and stage.name in paths else "width/height/batch"
        raise InvalidParams(
            where,
            f"needs about {gib(memory.peak(kinds[name]))} of {kinds[name]} memory (stage {stage.name!r} "
            f"works on {stage.work_size[0]}x{stage.work_size[1]}) but the largest "
            f"{'limit' if name == 'configured' else name + ' worker'} holds {gib(limit)}; use a smaller "
            "size or batch, a smaller unet_tile, tiled_vae, or another platform",
        )

    def check_output(self, memory: ChainMemory, paths: Mapping[str, str] | None) -> None:
        """Refuse a chain whose images grow past ``max_output_pixels`` at any stage (highres
        iterations, upscalers, grids), whatever the workers could hold: the estimate of a tiled
        stage stays small while the image it holds grows without bound."""
        stage = memory.largest_output()
        limit = self.config.max_output_pixels
        if stage is None or stage.output[0] * stage.output[1] <= limit:
            return
        if paths:
            # A compound stage (upscale-highres) runs as stages named after it: ``<name>-resize-0``.
            named = [
                path
                for name, path in paths.items()
                if stage.name == name or stage.name.startswith(f"{name}-")
            ]
            where = named[0] if named else "stages"
        else:
            where = next(
                (field for prefix, field in SIZED_BY if stage.name.startswith(prefix)), "width/height"
            )
        width, height = stage.output
        raise InvalidParams(
            where,
            f"stage {stage.name!r} would make a {width}x{height} image ({width * height} pixels); a job's "
            f"images may have at most {limit} pixels",
        )

    def capacities(self) -> dict[str, int | None]:
        """The largest memory a live worker of each platform announced; None where one did not
        (cached briefly)."""
        with self._lock:
            expires, cached = self._cached
            if time.monotonic() < expires:
                return dict(cached)
        largest: dict[str, int | None] = {}
        for worker in self.jobs.live_workers(self.live_window_s):
            known = largest.get(worker.platform, 0)
            if worker.memory_bytes is None or known is None:
                largest[worker.platform] = None
            else:
                largest[worker.platform] = max(known, worker.memory_bytes)
        with self._lock:
            self._cached = (time.monotonic() + CAPACITY_CACHE_S, largest)
        return dict(largest)

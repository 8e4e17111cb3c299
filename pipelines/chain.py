"""The chain executor: runs a resolved chain document stage by stage (contract §10).

Each stage receives the images the previous stage produced (the first receives none) and its
resolved parameters. The executor owns the three progress counters; stages only say "one more
step" or "tile k of n" through their context. Images marked by the persist stages are the job's
outputs; a chain without a persist stage keeps its final images as outputs, so no work is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.stages.base import Counter, Progress, SessionProvider, StageContext, StageImage
from pipelines.stages.catalogue import STAGES, estimate_steps

log = logging.getLogger(__name__)


@dataclass
class ChainResult:
    """What a finished chain produced."""

    #: The images to store as the job's outputs, in order.
    outputs: list[StageImage]
    #: Wall time per stage name, in milliseconds (for the job's summary log line).
    timings_ms: dict[str, int] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)


class _Tracker:
    """Holds the counters and pushes a snapshot to ``report`` whenever one changes."""

    def __init__(self, stages: list[Mapping[str, Any]], report: Callable[[Progress], None]) -> None:
        self.report = report
        self.steps = Counter(0, estimate_steps(stages))
        self.stages = Counter(0, len(stages))
        self.tiles = Counter(0, 0)

    def snapshot(self) -> Progress:
        return Progress(self.steps, self.stages, self.tiles)

    def push(self) -> None:
        self.report(self.snapshot())

    def step(self, n: int = 1) -> None:
        current = self.steps.current + n
        # A stage may run more steps than estimated (tiles, schedulers with extra calls):
        # grow the total rather than report more than 100%.
        self.steps = Counter(current, max(self.steps.total, current))
        self.push()

    def tile(self, done: int, total: int) -> None:
        self.tiles = Counter(done, total)
        self.push()

    def start_stage(self, index: int) -> None:
        self.stages = Counter(index, self.stages.total)
        self.tiles = Counter(0, self.tiles.total)
        self.push()

    def finish(self) -> None:
        self.steps = Counter(self.steps.total, self.steps.total)
        self.stages = Counter(self.stages.total, self.stages.total)
        self.push()


def run_chain(
    chain: Mapping[str, Any],
    *,
    models_path: Path,
    sessions: SessionProvider,
    inputs: Mapping[str, Image.Image] | None = None,
    report: Callable[[Progress], None] = lambda progress: None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> ChainResult:
    """Run every stage of ``chain`` in order and return the images to keep."""
    stages: list[Mapping[str, Any]] = list(chain["stages"])
    tracker = _Tracker(stages, report)
    persisted: list[StageImage] = []
    images: list[StageImage] = []
    timings: dict[str, int] = {}
    tracker.push()
    for index, stage in enumerate(stages):
        check_cancelled()
        tracker.start_stage(index)
        stage_type = STAGES[stage["type"]]
        ctx = StageContext(
            models_path=models_path,
            sessions=sessions,
            inputs=inputs or {},
            on_step=tracker.step,
            on_tile=tracker.tile,
            check_cancelled=check_cancelled,
            persist=persisted.extend,
        )
        params = {**stage["params"], "stage_name": stage["name"]}
        started = time.monotonic()
        images = stage_type.runner()(ctx, params, images)
        timings[stage["name"]] = int((time.monotonic() - started) * 1000)
        log.debug("stage done", extra={"stage": stage["name"], "type": stage["type"], "images": len(images)})
    tracker.finish()
    return ChainResult(outputs=persisted or images, timings_ms=timings, progress=tracker.snapshot())

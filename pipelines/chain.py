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
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipelines.context import Counter, Output, Progress, SessionProvider, StageContext, StageImage, StageText
from pipelines.imageops.metadata import uploaded
from pipelines.stages import STAGES, estimate_steps
from pipelines.stages.shared import MAX_SEED
from pipelines.stages.spec import StageRunner

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass
class ChainResult:
    """What a finished chain produced."""

    #: The images (or a txt2txt job's texts) to store as the job's outputs, in order.
    outputs: list[Output]
    #: Wall time per stage name, in milliseconds (for the job's summary log line).
    timings_ms: dict[str, int] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)


class ModelInvalid(ValueError):
    """ONNX Runtime cannot load a model file (damaged, truncated, not ONNX): a retry reads the same bytes."""

    code = "model_invalid"


def unloadable_model(err: Exception) -> bool:
    """Whether ``err`` is ONNX Runtime refusing to load a model file, rather than failing to run one."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort

    if isinstance(err, ort.InvalidProtobuf | ort.InvalidGraph):
        return True
    # These are raised for other causes too (a bad input, a failed kernel); loads say "load model".
    loading = ort.NoSuchFile | ort.NoModel | ort.InvalidArgument | ort.Fail
    return isinstance(err, loading) and "load model" in str(err).lower()


class _Tracker:
    """Holds the counters and pushes a snapshot to ``report`` whenever one changes.

    No counter ever goes back, and a finished chain reports every counter complete. ``tiles``
    counts over the whole chain: a stage reports each of its tiled runs (one per image it tiles)
    as ``(tiles done, tiles in the run)`` from 1, and each run adds its tiles to those of the runs
    before it.
    """

    def __init__(self, stages: list[Mapping[str, Any]], report: Callable[[Progress], None]) -> None:
        self.report = report
        self.steps = Counter(0, estimate_steps(stages))
        self.stages = Counter(0, len(stages))
        self.tiles = Counter(0, 0)
        #: The tiles of the runs that ended, and the run in progress (``Counter(0, 0)`` when none).
        self._ended_tiles = Counter(0, 0)
        self._run = Counter(0, 0)

    def snapshot(self) -> Progress:
        return Progress(self.steps, self.stages, self.tiles)

    def push(self) -> None:
        self.report(self.snapshot())

    def extend(self, steps: int) -> None:
        """Add work discovered while running (a stage split into tiles runs once per tile)."""
        self.steps = Counter(self.steps.current, self.steps.total + steps)
        self.push()

    def step(self, n: int = 1) -> None:
        current = self.steps.current + n
        # A stage may run more steps than estimated (tiles, schedulers with extra calls):
        # grow the total rather than report more than 100%.
        self.steps = Counter(current, max(self.steps.total, current))
        self.push()

    def tile(self, done: int, total: int) -> None:
        # A count no higher than the run's last one is the next run (the stage's next image).
        if done <= self._run.current:
            self._end_run()
        self._run = Counter(done, total)
        self.tiles = Counter(self._ended_tiles.current + done, self._ended_tiles.total + total)
        self.push()

    def start_stage(self, index: int) -> None:
        self._end_run()
        self.stages = Counter(index, self.stages.total)
        self.push()

    def finish(self) -> None:
        self.steps = Counter(self.steps.total, self.steps.total)
        self.stages = Counter(self.stages.total, self.stages.total)
        self.tiles = Counter(self.tiles.total, self.tiles.total)
        self.push()

    def _end_run(self) -> None:
        self._ended_tiles = Counter(
            self._ended_tiles.current + self._run.current, self._ended_tiles.total + self._run.total
        )
        self._run = Counter(0, 0)


def run_chain(
    chain: Mapping[str, Any],
    *,
    models_path: Path,
    sessions: SessionProvider,
    inputs: Mapping[str, Image.Image] | None = None,
    report: Callable[[Progress], None] = lambda progress: None,
    check_cancelled: Callable[[], None] = lambda: None,
    preview: Callable[[int, str, Callable[[], np.ndarray]], None] | None = None,
) -> ChainResult:
    """Run every stage of ``chain`` in order and return the images to keep.

    ``preview`` becomes every stage's ``StageContext.on_latents``: the diffusion loops call it
    after each step with the step count, the model family and a getter of their latents.
    """
    stages: list[Mapping[str, Any]] = list(chain["stages"])
    tracker = _Tracker(stages, report)
    persisted: list[StageImage] = []
    extras: list[StageImage] = []
    texts: list[StageText] = []
    # Values a stage replaced for later ones (text-prompt's prompt), shared by every stage's context.
    carry: dict[str, dict[Any, Any]] = {}
    # One mutable copy for the whole chain: a preparing stage may hand later ones new inputs.
    inputs = dict(inputs or {})
    # Legacy routes start from their uploads (img2img's source, blend's first image).
    # Upscaling or blending an output records the params it was made with, as onnx-web's routes do.
    images: list[StageImage] = [uploaded(inputs[key]) for key in chain.get("sources", [])]
    timings: dict[str, int] = {}
    tracker.push()
    for index, stage in enumerate(stages):
        check_cancelled()
        tracker.start_stage(index)
        stage_type = STAGES[stage["type"]]
        ctx = StageContext(
            models_path=models_path,
            sessions=sessions,
            inputs=inputs,
            on_step=tracker.step,
            on_tile=tracker.tile,
            check_cancelled=check_cancelled,
            on_latents=preview or _no_preview,
            persist=persisted.extend,
            persist_extra=extras.extend,
            persist_text=texts.extend,
            carry=carry,
        )
        loaded = stage_type.load(stage["params"])
        carried = {key: swaps[loaded[key]] for key, swaps in carry.items() if loaded.get(key) in swaps}
        # Its name (the uploads it reads) and its tile size (the model upscalers' own tiles).
        params = {**loaded, **carried, "stage_name": stage["name"], "tiles": stage["tiles"]}
        started = time.monotonic()
        runner = stage_type.run
        upload = inputs.get(f"source:{stage['name']}")
        if stage_type.tileable and not images and upload is not None:
            # Its own upload, as stage_sources would take it, so that a large one is tiled too.
            images = [uploaded(upload)]
        try:
            if stage_type.tileable and _needs_tiles(stage, images):
                images = _run_tiled(runner, ctx, stage, params, images, tracker)
            else:
                images = runner(ctx, params, images)
        except Exception as err:
            if not unloadable_model(err):
                raise
            raise ModelInvalid(f"stage {stage['name']!r} cannot load its model: {err}") from err
        timings[stage["name"]] = int((time.monotonic() - started) * 1000)
        log.debug("stage done", extra={"stage": stage["name"], "type": stage["type"], "images": len(images)})
    tracker.finish()
    outputs: list[Output] = [*(persisted or images), *extras, *texts]
    return ChainResult(outputs=outputs, timings_ms=timings, progress=tracker.snapshot())


def _no_preview(step: int, family: str, latents: Callable[[], np.ndarray]) -> None:
    """The ``on_latents`` of a chain run without previews."""


def _needs_tiles(stage: Mapping[str, Any], images: list[StageImage]) -> bool:
    """Tile when an input is larger than the stage's tile (contract §10.4).

    A stage mask alone does not force tiling here: the stages handle whole masked images and
    skip untouched ones themselves; tiling only pays when the image outgrows the tile.
    """
    tile = int(stage["tiles"])
    return any(max(item.image.size) > tile for item in images)


def _tile_runner(
    runner: StageRunner,
    ctx: StageContext,
    params: dict[str, Any],
    mask_key: str,
    metadata: dict[str, Any],
    made: list[dict[str, Any]],
) -> Callable[[Image.Image, Image.Image | None], Image.Image]:
    """The function the tiler calls per tile: the stage on that tile alone, with the tile's mask.

    The metadata the stage gave the last tile it changed is left in ``made``: every tile of a
    pass records the same generation, which is the whole image's.
    """

    def one_tile(tile_image: Image.Image, tile_mask: Image.Image | None) -> Image.Image:
        tile_inputs = {**ctx.inputs, mask_key: tile_mask} if tile_mask is not None else dict(ctx.inputs)
        tile_ctx = StageContext(
            models_path=ctx.models_path,
            sessions=ctx.sessions,
            inputs=tile_inputs,
            on_step=ctx.on_step,
            on_tile=lambda done, total: None,
            check_cancelled=ctx.check_cancelled,
            on_latents=ctx.on_latents,
            persist=ctx.persist,
            persist_extra=ctx.persist_extra,
            persist_text=ctx.persist_text,
            carry=ctx.carry,
        )
        result = runner(tile_ctx, params, [StageImage(tile_image, metadata)])[0]
        if result.metadata != metadata:  # a tile the stage left alone keeps its input's
            made[:] = [result.metadata]
        return result.image

    return one_tile


def _whole_image_metadata(
    made: dict[str, Any], source: StageImage, result: Image.Image, batch: int
) -> dict[str, Any]:
    """A tile's metadata as the whole image's: its sizes, and the batch the tiled passes made."""
    metadata = {**made, "size": {"width": result.width, "height": result.height}}
    if "input_size" in metadata:  # what the source records of the job's input, else the source
        size = {"width": source.image.width, "height": source.image.height}
        metadata["input_size"] = source.metadata.get("input_size", size)
    if "batch" in metadata.get("params", {}):
        metadata["params"] = {**metadata["params"], "batch": batch}
    return metadata


def _run_tiled(
    runner: StageRunner,
    ctx: StageContext,
    stage: Mapping[str, Any],
    params: dict[str, Any],
    images: list[StageImage],
    tracker: _Tracker,
) -> list[StageImage]:
    """Run a stage tile by tile over each input image: ``batch`` results per image, as untiled.

    Each tile runs at batch 1, so a batch of ``n`` is ``n`` tiled passes over the image, the
    ``i``-th with seed ``seed + i``.
    """
    from pipelines.imageops.tiling import process_tiled, tile_positions

    tile = int(stage["tiles"])
    overlap = float(params["overlap"])
    order = str(params["tile_order"])
    mask_key = f"mask:{stage['name']}"
    full_mask = ctx.inputs.get(mask_key)
    per_tile = STAGES[stage["type"]].estimate(params)
    batch = int(params["batch"]) if STAGES[stage["type"]].makes_batch else 1
    results = []
    for item in images:
        count = len(tile_positions(order, item.image.width, item.image.height, tile, overlap))
        mask = full_mask.convert("L").resize(item.image.size) if full_mask is not None else None
        # A mask that keeps everything leaves the image as it is: one of it, as untiled.
        passes = 1 if mask is not None and mask.getbbox() is None else batch
        tracker.extend(per_tile * (count * passes - 1))
        for index in range(passes):
            tile_params = {**params, "batch": 1}
            if index:
                tile_params["seed"] = (int(params["seed"]) + index) % (MAX_SEED + 1)
            made: list[dict[str, Any]] = []
            one_tile = _tile_runner(runner, ctx, tile_params, mask_key, dict(item.metadata), made)
            image = process_tiled(
                item.image,
                tile,
                overlap,
                int(stage.get("outscale", 1)),
                order,
                one_tile,
                on_tile=ctx.on_tile,
                check_cancelled=ctx.check_cancelled,
                mask=mask,
                fill=str(params.get("fill_color", "white")),
            )
            if made:
                metadata = _whole_image_metadata(made[0], item, image, passes)
            else:  # no tile ran (a mask keeps everything): the input, with its own metadata
                metadata = {**item.metadata, "size": {"width": image.width, "height": image.height}}
            results.append(StageImage(image, metadata))
    return results

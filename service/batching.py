"""Cross-job batching: run claimed plain txt2img jobs as one UNet batch, each finished on its own.

``claim_batch`` hands the worker up to ``batch_max`` jobs that share a ``batch_key``: each a chain
of exactly ``[source-txt2img, persist-disk]`` making one image, with no uploads and no tiled VAE,
and all of one model, size, scheduler and step count (see ``migrations/versions/0003_batch_key``).
A job that asks for several images already fills a UNet batch itself, so it is claimed alone.
An SDXL model batches too on CPU workers, named by its folder (``txt2img``) or by the
``txt2img-sdxl`` pipeline (whose jobs batch only with each other,
``migrations/versions/0013_batch_key_sdxl``): the batched loop feeds each job's own SDXL
conditioning. On CUDA workers SDXL jobs run alone: batching them pays too little there
(``_runs_batched``). A job whose model name makes no models folder, or that asks for
``txt2img-sdxl`` on a model that is not SDXL, runs alone (where it fails as any such job does), and
its mates go back to the queue.

``txt2img_batch`` shares only the UNet calls. Everything else stays per job, exactly as
``Worker.run_job`` does it for a lone job: its own lease thread (a lost lease stops that job
alone), throttled progress writes, cancellation (a cancelled job leaves the batch and ends
``cancelled`` while the others run on), outputs under its own attempt's prefix, and a commit
fenced by its own attempt, all through ``JobRunner.hold`` and ``JobRun.conclude``
(``service.jobrun``). An error that stops the whole batch
(the model does not load, the device runs out of memory) ends each job's attempt as the same
error would end it alone: retried or failed by the same rules.

A job's outputs are built by the stage's own ``generations`` and ``stage_images``, and its
progress counts as ``run_chain`` counts this chain, so neither depends on its batch mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.context import Counter, Progress, StageImage
from pipelines.diffusion.model import DiffusionModel, Generation, load_model, model_folder
from pipelines.diffusion.sdxl import SDXL_SUFFIX, is_sdxl_folder
from pipelines.gpu.batch import Txt2ImgJob, txt2img_batch
from pipelines.gpu.runtime import gpu_settings
from pipelines.models.sessions import SessionCache
from pipelines.stages import estimate_steps
from pipelines.stages.source_txt2img import generations, stage_images
from service.faults import fault_point
from service.jobrun import JobRun, JobRunner, elapsed_ms
from service.jobs.store import ClaimedJob

#: The plain txt2img chain's stages: ``source-txt2img``, then ``persist-disk``.
PLAIN_STAGES = 2


@dataclass
class Member:
    """One job of a batch: its run, what it asked for, what it runs, and how it came out."""

    run: JobRun
    #: The ``source-txt2img`` stage's resolved params.
    params: dict[str, Any]
    #: The chain's estimated steps (``run_chain``'s ``steps.total``).
    steps_total: int
    #: What the params ask for, and what the UNet generates (whole 64-px cells); None if unplanned.
    requested: Generation | None = None
    generation: Generation | None = None
    steps_done: int = 0
    images: list[Image.Image] = field(default_factory=list)
    #: What stopped this job (alone or with the whole batch); it ends the job's attempt.
    error: BaseException | None = None

    def on_step(self, count: int) -> None:
        """Count scheduler steps as ``run_chain`` does in the first stage, and report them."""
        self.steps_done += count
        steps = Counter(self.steps_done, max(self.steps_total, self.steps_done))
        self.run.report(Progress(steps, Counter(0, PLAIN_STAGES), Counter(0, 0)))


def run_batch(
    runner: JobRunner,
    sessions: SessionCache,
    jobs: Sequence[ClaimedJob],
    *,
    run_alone: Callable[[ClaimedJob], None],
    models_path: Path | None = None,
) -> None:
    """Run compatible claimed jobs as one batch; each ends as ``run_alone`` would end it alone.

    ``models_path`` is the folder the model is in: the worker's models folder unless given (the
    pull cache, for a model from the model store the cache already holds).
    """
    models_path = models_path or runner.config.models_path
    if not _runs_batched(models_path, jobs[0], sessions):
        # Hand the mates back unspent (they are claimed again, each in its turn) and run the
        # first job alone: the lone path is the only one that runs its model.
        for job in jobs[1:]:
            runner.release(job)
        run_alone(jobs[0])
        return
    fault_point("after_claim")
    started = time.monotonic()
    with ExitStack() as leases:
        members = [_plan(leases.enter_context(runner.hold(job))) for job in jobs]
        model = _generate(models_path, sessions, members)
        shared = {"txt2img_batch": elapsed_ms(started)}
        outcomes = []
        for member in members:
            timings = dict(shared)
            outcome = member.run.conclude(partial(_outputs, models_path, member, model), timings)
            outcomes.append((member.run, outcome, timings))
    for run, outcome, timings in outcomes:
        run.log_summary(outcome, started, timings, batch=len(jobs))


def _runs_batched(models_path: Path, job: ClaimedJob, sessions: SessionCache) -> bool:
    """Whether the batched loop runs the job (and its mates, which share its key) as the lone path
    would: a model name that makes a models folder, and an SDXL folder if the job asks for SDXL.

    An SDXL model does not batch on a CUDA worker: there two jobs in one batch make about 5% more
    images/s than one job alone (0.928 against 0.883 on an H100, ``docs/gpu.md``, sixth round), and
    the first job waits for the second's image too. CPU workers batch it (tested within 1 level).
    """
    params = job.chain["stages"][0]["params"]
    try:
        folder = model_folder(models_path, str(params["model"]))
    except ValueError:
        return False  # an unusable name: the lone path fails the job as it fails any other
    if is_sdxl_folder(folder):
        return gpu_settings(sessions) is None
    return not str(params.get("pipeline", "txt2img")).endswith(SDXL_SUFFIX)


def _plan(run: JobRun) -> Member:
    """A member for ``run``'s job; a job whose params cannot run keeps the error and fails alone."""
    stages = run.job.chain["stages"]
    member = Member(run=run, params=dict(stages[0]["params"]), steps_total=estimate_steps(stages))
    try:
        member.requested, member.generation = generations(member.params)
    except Exception as err:  # bad params end this job's attempt, as the stage would end it alone
        member.error = err
    return member


def _generate(models_path: Path, sessions: SessionCache, members: list[Member]) -> DiffusionModel | None:
    """Generate every planned member's images in one ``txt2img_batch``; returns the model it used.

    A member stopped alone (cancelled, lease lost, released) keeps its own error; an error that
    stops the batch becomes every planned member's.
    """
    planned = [(member, member.generation) for member in members if member.generation and not member.error]
    if not planned:
        return None
    batch = [Txt2ImgJob(generation, member.on_step, member.run.check) for member, generation in planned]
    try:
        model = load_model(models_path, batch[0].generation.model, sessions)
        outcomes = txt2img_batch(model, batch)
    except Exception as err:  # shared by the whole batch: each job's attempt ends with it
        for member, _ in planned:
            member.error = err
        return None
    for (member, _), outcome in zip(planned, outcomes, strict=True):
        member.images, member.error = outcome.images, outcome.error
    return model


def _outputs(models_path: Path, member: Member, model: DiffusionModel | None) -> list[StageImage]:
    """The member's outputs as its chain would persist them; raises what stopped the member."""
    if member.error is not None:
        raise member.error
    assert model is not None and member.requested is not None, "a member without an error was generated"
    total = max(member.steps_total, member.steps_done)
    member.run.latest = Progress(Counter(total, total), Counter(PLAIN_STAGES, PLAIN_STAGES), Counter(0, 0))
    return stage_images(member.params, member.requested, model, models_path, member.images)

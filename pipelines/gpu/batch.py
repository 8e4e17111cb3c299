"""txt2img for several compatible jobs as one UNet batch, on the GPU path or on the CPU.

Jobs are compatible when they share model, size, scheduler and step count. Each keeps its own
prompt and negative prompt, seed (its starting noise is ``default_rng(seed)``'s, exactly as a job
run alone), guidance scale, eta, scheduler instance (stochastic schedulers draw their step noise
from the job's own seeded generator), progress, preview and cancellation callbacks (``on_latents``
sees the job's own latents, never its batch mates') and images: only the UNet call is shared,
so a job's pixels do not depend on its batch mates beyond the rounding of a larger matrix product.
Jobs whose prompts need a different number of 77-token windows cannot share a UNet call
(attention would see padding); they run as separate groups.

An LCM-distilled UNet (``pipelines.diffusion.lcm``) runs here too: each job's guidance scale is
embedded into its own rows of the UNet's ``timestep_cond``, and its prompt alone is encoded (one
row per image, as ``LcmRun`` runs it), so jobs of different guidance scales still share a call.
An SDXL model's jobs (its folder says so) run here with SDXL's conditioning: each job's own
pooled text embedding and size ``time_ids`` rows beside its text states, as ``txt2img_sdxl``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.lcm import TIMESTEP_COND, LcmRun, guidance_embedding, lcm_run
from pipelines.diffusion.schedulers import step_arguments
from pipelines.diffusion.sdxl import SdxlRun, is_sdxl_folder, unet_inputs
from pipelines.gpu import runtime
from pipelines.gpu.runtime import GpuDiffusionModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Txt2ImgJob:
    """One txt2img request in a batch: its parameters and its own callbacks."""

    generation: sd.Generation
    on_step: sd.StepCallback = lambda n: None
    check_cancelled: sd.CancelCheck = lambda: None
    on_latents: sd.LatentsCallback = lambda step, family, latents: None


@dataclass
class JobOutcome:
    """What one job of a batch ended with: its images, or the error that stopped it alone."""

    images: list[Image.Image] = field(default_factory=list)
    error: BaseException | None = None


class Denoiser(Protocol):
    """Where the UNet and VAE run: ``CpuDenoiser`` (ONNX sessions, numpy) or ``GpuDenoiser``."""

    device: Any

    def stream(self) -> AbstractContextManager[Any]:
        """Where the loop's torch work is queued (the GPU model's stream)."""
        ...

    def predict_noise(self, sample: Any, timestep: Any, conditioning: Mapping[str, Any]) -> Any:
        """The UNet's noise prediction in fp32; ``conditioning`` holds its other inputs by name
        (``encoder_hidden_states``, SDXL's ``text_embeds`` and ``time_ids``, an LCM-distilled
        UNet's ``timestep_cond``), one row per ``sample`` row."""
        ...

    def decode(self, latents: Any) -> list[Image.Image]: ...


class CpuDenoiser:
    """The model's cached ONNX Runtime sessions fed from the CPU, as the single-job path runs."""

    def __init__(self, model: sd.DiffusionModel) -> None:
        import torch

        self.model = model
        self.device = torch.device("cpu")

    def stream(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def predict_noise(self, sample: Any, timestep: Any, conditioning: Mapping[str, Any]) -> Any:
        import torch

        unet = self.model.session("unet")
        feeds = {"sample": sample, "timestep": timestep, **conditioning}
        noise = unet.run(
            None,
            {
                name: value.numpy().astype(sd.input_type(unet, name, np.float32))
                for name, value in feeds.items()
            },
        )[0]
        return torch.from_numpy(noise).float()

    def decode(self, latents: Any) -> list[Image.Image]:
        return sd.decode_latents(self.model, latents.numpy())


class GpuDenoiser:
    """UNet and VAE decoder on CUDA (``pipelines.gpu.runtime``); latents never leave the GPU."""

    def __init__(self, model: sd.DiffusionModel, on_gpu: GpuDiffusionModel) -> None:
        self.model = model
        self.on_gpu = on_gpu
        self.device = on_gpu.device

    def stream(self) -> AbstractContextManager[Any]:
        import torch

        return torch.cuda.stream(self.on_gpu.stream)

    def predict_noise(self, sample: Any, timestep: Any, conditioning: Mapping[str, Any]) -> Any:
        return self.on_gpu.predict_noise(sample, timestep, conditioning)

    def decode(self, latents: Any) -> list[Image.Image]:
        """Decode on the GPU and bring back 8-bit pixels, rounded as ``decode_latents`` does."""
        return self.on_gpu.decode_images(latents, self.model.scaling_factor)


def denoiser_for(model: sd.DiffusionModel) -> Denoiser:
    """The GPU denoiser where the model takes the CUDA-graph path here (``graph_model``), else the
    sessions'."""
    on_gpu = runtime.graph_model(model)
    return CpuDenoiser(model) if on_gpu is None else GpuDenoiser(model, on_gpu)


def compatibility_key(generation: sd.Generation) -> tuple[str, int, int, str, int]:
    """What jobs must share to run as one batch: model, width, height, scheduler, steps."""
    return (generation.model, generation.width, generation.height, generation.scheduler, generation.steps)


@dataclass
class _Running:
    """One job's state inside the batched loop."""

    index: int
    job: Txt2ImgJob
    #: What the loop runs: the job's generation, or for an LCM-distilled UNet the same at cfg 1.
    generation: sd.Generation
    #: ``report_step``'s family: ``sd`` or ``sdxl``.
    family: str
    scheduler: Any
    arguments: dict[str, Any]
    #: The UNet's inputs besides sample and timestep, one row per UNet row of this job:
    #: ``encoder_hidden_states``, and SDXL's ``text_embeds`` and ``time_ids`` or an LCM-distilled
    #: UNet's embedded guidance scale (``timestep_cond``). One set per prompt its ``(a|b)`` groups
    #: make (``Run.embeddings_by_call``), all of one shape, taken in turn per UNet call.
    conditionings: list[dict[str, Any]]
    sample: Any
    #: Scheduler steps this job has finished (``on_latents``'s count).
    done: int = 0

    def conditioning(self, call: int) -> dict[str, Any]:
        """The inputs of UNet call ``call`` (from 0)."""
        return self.conditionings[call % len(self.conditionings)]

    @property
    def rows(self) -> int:
        """UNet batch rows of this job: its images, twice with guidance."""
        return len(self.conditionings[0]["encoder_hidden_states"])

    @property
    def sequence(self) -> int:
        """Prompt tokens of this job (77 per window): jobs of different lengths cannot share a call."""
        return int(self.conditionings[0]["encoder_hidden_states"].shape[1])


def txt2img_batch(
    model: sd.DiffusionModel, jobs: Sequence[Txt2ImgJob], *, denoiser: Denoiser | None = None
) -> list[JobOutcome]:
    """Run compatible txt2img ``jobs`` with shared UNet calls; one outcome per job, in order.

    A job that is cancelled (or whose callback raises) ends with that error and leaves the
    batch; the others run on. Raises ``ValueError`` if the jobs are not compatible.
    """
    if not jobs:
        return []
    keys = {compatibility_key(job.generation) for job in jobs}
    if len(keys) > 1:
        raise ValueError(f"jobs differ in model, size, scheduler or steps: {sorted(keys)}")
    outcomes = [JobOutcome() for _ in jobs]
    runs = [(number, job, _run(model, job)) for number, job in enumerate(jobs)]
    # Jobs share UNet calls only where they share the UNet: a prompt that blends a LoRA into it
    # runs with the jobs of the same blend, on the sessions that hold it (the GPU model is the
    # folder's own), as ``txt2img`` runs such a job alone.
    unets: dict[Any, list[tuple[int, Txt2ImgJob, sd.Run]]] = {}
    for index, job, run in runs:
        unets.setdefault(run.model.networks.variant("unet"), []).append((index, job, run))
    for variant, members in unets.items():
        if variant is None:
            on = denoiser = denoiser or denoiser_for(model)
        else:
            on = CpuDenoiser(members[0][2].model)
        with on.stream():
            running = [_start(index, job, run, on) for index, job, run in members]
            groups: dict[int, list[_Running]] = {}
            for item in running:
                groups.setdefault(item.sequence, []).append(item)
            for group in groups.values():
                for item in _denoise(on, group, outcomes):
                    outcomes[item.index].images = on.decode(item.sample)
    return outcomes


def _run(model: sd.DiffusionModel, job: Txt2ImgJob) -> sd.Run:
    """The run ``txt2img`` (or ``txt2img_sdxl``) makes of a lone job: its model blends the networks
    its prompt names; an LCM-distilled UNet's is an ``LcmRun``. It reports to nothing: the loop
    reports to the job itself (``_report``)."""
    sdxl = is_sdxl_folder(model.folder)
    return lcm_run((SdxlRun if sdxl else sd.Run)(model, job.generation), "txt2img")


def _start(index: int, job: Txt2ImgJob, run: sd.Run, denoiser: Denoiser) -> _Running:
    """Encode one job's prompts and draw its starting noise, as ``txt2img`` (or ``txt2img_sdxl``)
    does for a lone job."""
    import torch

    if isinstance(run, SdxlRun):
        cycle = [unet_inputs(run.conditioning)]
    else:
        cycle = [{"encoder_hidden_states": embeddings} for embeddings in run.embeddings_by_call()]
        if isinstance(run, LcmRun):
            rows = len(cycle[0]["encoder_hidden_states"])
            for inputs in cycle:
                inputs[TIMESTEP_COND] = guidance_embedding(run.guidance_scale, run.width, rows)
    generation = run.generation
    scheduler = run.scheduler()
    return _Running(
        index=index,
        job=job,
        generation=generation,
        family=run.family,
        scheduler=scheduler,
        arguments=step_arguments(
            scheduler, eta=generation.eta, generator=sd.torch_generator(generation.seed)
        ),
        conditionings=[
            {name: torch.from_numpy(array).to(denoiser.device) for name, array in inputs.items()}
            for inputs in cycle
        ],
        sample=torch.from_numpy(run.starting_latents(scheduler, reseeded=True)).to(denoiser.device),
    )


def _denoise(denoiser: Denoiser, group: list[_Running], outcomes: list[JobOutcome]) -> list[_Running]:
    """The UNet loop over jobs that share a prompt length; returns the jobs still running."""
    import torch

    timesteps = group[0].scheduler.timesteps
    total = len(timesteps)
    steps = group[0].generation.steps
    for index, t in enumerate(timesteps):
        inputs = []
        for item in group:
            doubled = torch.cat([item.sample] * 2) if item.generation.guidance else item.sample
            inputs.append(item.scheduler.scale_model_input(doubled, t))
        sample = torch.cat(inputs)
        # One model per batch: every job of the group has the same inputs.
        conditioning = {
            name: torch.cat([item.conditioning(index)[name] for item in group])
            for name in group[0].conditioning(index)
        }
        timestep = torch.full((len(sample),), float(t), device=denoiser.device)
        noise = denoiser.predict_noise(sample, timestep, conditioning)
        offset = 0
        for item in group:
            prediction = noise[offset : offset + item.rows]
            offset += item.rows
            generation = item.generation
            if generation.guidance:
                uncond, text = prediction.chunk(2)
                prediction = uncond + generation.cfg * (text - uncond)
            item.sample = item.scheduler.step(
                prediction, t, item.sample, **item.arguments, return_dict=False
            )[0]
        group = [item for item in group if _report(item, index, total, steps, outcomes)]
        if not group:
            break
    return group


def _report(item: _Running, index: int, total: int, steps: int, outcomes: list[JobOutcome]) -> bool:
    """Call a job's progress, preview and cancellation callbacks; False (and its error kept) if one raised."""
    try:
        if sd.counts_as_step(index, total, steps, item.scheduler.order):
            item.done += 1
            sd.report_step(item.job, item.done, item.family, item.sample)
        item.job.check_cancelled()
    except Exception as err:
        outcomes[item.index].error = err
        return False
    return True


def run_txt2img(run: sd.Run) -> list[Image.Image]:
    """One job through the batched path (the GPU route of ``txt2img``); raises what stopped it."""
    generation = run.generation
    if isinstance(run, LcmRun):  # the job as asked: the batched loop embeds its cfg itself
        generation = replace(generation, cfg=run.guidance_scale)
    job = Txt2ImgJob(generation, run.hooks.on_step, run.hooks.check_cancelled, run.hooks.on_latents)
    outcome = txt2img_batch(run.model, [job])[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome.images

"""The ``panorama`` pipelines: MultiDiffusion on SD 1.x/2.x and SDXL, with region prompts and seeds.

Each denoising step runs the UNet on overlapping windows ("views") of the latents, steps the
scheduler on each window and averages the overlaps, weighted by how many windows cover each
latent cell (MultiDiffusion, arXiv:2302.08113). The numerics follow diffusers'
``StableDiffusionPanoramaPipeline`` with ``circular_padding`` off: every view keeps its own
scheduler state, and the views draw their step noise from one seeded generator in view order.

``panorama-sdxl`` (or ``panorama`` on an SDXL model: an ``SdxlRun``) runs the same loop on SDXL's
UNet and conditioning (``pipelines.diffusion.sdxl``): every view, and every region, is conditioned
on the size of the whole image (``time_ids``), as onnx-web's SDXL panorama pipeline does, so a
single view over the whole image is exactly SDXL txt2img.

Region prompts work only here (contract §9, features "Region prompts"):
``<region:top:left:bottom:right:strength:feather[_TLBR]:prompt>`` denoises a rectangle with its
own prompt as one more view, weighted by ``strength`` (at ``REPLACE_STRENGTH`` and above it
replaces the base prompt there), its edges blended over ``feather`` of its size on the chosen
edges. A trailing ``+`` appends the base prompt. Regions are skipped on the last timestep.
``<reseed:top:left:bottom:right:seed>`` tokens reseed the starting noise here as in every txt2img
task (``sd.reseed_latents``). Rectangles are in pixels, multiples of 8, inside the generated image.

``panorama_img2img`` (``panorama`` and ``panorama-sdxl`` on img2img) runs the same windows from the
source's latents noised at the strength's first timestep, as img2img starts. ``panorama_inpaint`` (on
inpaint and outpaint) runs them from noise over the whole canvas, each window given its own part of
the mask and of the masked image's latents (an inpainting UNet), or the kept region put back after
every step (a plain one), as ``inpaint`` does for one window. Like onnx-web's panorama ``img2img``
and ``inpaint``, both run the base windows only: region and reseed tokens shape txt2img alone.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion import sdxl
from pipelines.diffusion.img2img import img2img, noised_source
from pipelines.diffusion.inpaint import inpaint, inpaint_inputs
from pipelines.diffusion.prompt import PromptText, Reseed, parse_prompt
from pipelines.diffusion.prompt_grammar import check_areas
from pipelines.diffusion.schedulers import step_arguments

#: The pipelines that run MultiDiffusion: ``panorama-sdxl``, and ``panorama`` on an SDXL model, run SDXL's.
PANORAMA_PIPELINES = ("panorama", "panorama-sdxl")
#: diffusers' window: 64 latent cells (512 pixels), the size SD 1.x was trained at.
DEFAULT_WINDOW = 64
#: diffusers' stride between windows, in latent cells.
DEFAULT_STRIDE = 8
#: A region of this strength or more replaces the base prompt inside its rectangle; below it the
#: region is one more view weighted by its strength, as onnx-web's panorama pipelines blend it.
REPLACE_STRENGTH = 100.0
#: Exported UNets take latents in whole cells of this many latent pixels (``sd.UNET_GRID`` pixels).
UNET_CELL = sd.UNET_GRID // sd.LATENT_FACTOR
T = TypeVar("T")


@dataclass(frozen=True)
class Rectangle:
    """A rectangle of the image in pixels, edges included at the top-left and excluded at the bottom-right."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def latent(self) -> tuple[slice, slice]:
        """The rows and columns of the latents this rectangle covers."""
        factor = sd.LATENT_FACTOR
        return slice(self.top // factor, self.bottom // factor), slice(
            self.left // factor, self.right // factor
        )


@dataclass(frozen=True)
class Region:
    """A ``<region:...>`` token: a rectangle denoised with its own prompt."""

    rectangle: Rectangle
    strength: float
    #: Share of the rectangle's size, from 0 to 0.5, blended in from each feathered edge.
    feather: float
    #: The feathered edges, among ``T``, ``L``, ``B`` and ``R``.
    edges: str
    prompt: str
    #: A trailing ``+``: the base prompt follows the region's.
    append_base: bool

    def text(self, base: str) -> str:
        """The prompt the region is encoded with."""
        return f"{self.prompt} {base}" if self.append_base else self.prompt

    def mask(self) -> np.ndarray:
        """The region's weight per latent cell: 1 inside, ramping to 0 at its feathered edges."""
        rows, columns = self.rectangle.latent
        vertical = _ramp(rows.stop - rows.start, self.feather, "T" in self.edges, "B" in self.edges)
        horizontal = _ramp(columns.stop - columns.start, self.feather, "L" in self.edges, "R" in self.edges)
        mask: np.ndarray = np.outer(vertical, horizontal).astype(np.float32)
        return mask


def region_tokens(prompt: str) -> tuple[list[Region], list[Reseed]]:
    """The region prompts of one prompt stage, with their rectangles, and its reseed tokens.

    The shared grammar (``pipelines.diffusion.prompt_grammar``) reads the tokens; it also leaves
    them out of the text it encodes, so the base prompt needs no rewriting.
    """
    parsed = parse_prompt(prompt)
    regions = [
        Region(
            Rectangle(token.top, token.left, token.bottom, token.right),
            token.strength,
            token.feather,
            token.edges,
            token.prompt,
            token.append_base,
        )
        for token in parsed.regions
    ]
    return regions, parsed.reseeds


def _ramp(length: int, feather: float, start: bool, end: bool) -> np.ndarray:
    """Weights along one side: 1, falling linearly to 0 over ``feather * length`` at the feathered ends."""
    weights = np.ones(length)
    width = feather * length
    if width > 0:
        centres = np.arange(length) + 0.5
        if start:
            weights = np.minimum(weights, centres / width)
        if end:
            weights = np.minimum(weights, (length - centres) / width)
    return weights


@dataclass(frozen=True)
class View:
    """A window the UNet runs on each step (latent rows and columns) and what its result counts for."""

    rows: slice
    columns: slice
    #: The UNet's text conditioning: SD's prompt embeddings, or SDXL's ``SdxlConditioning``.
    embeddings: Any
    #: The region this view denoises (its rectangle lies inside the window); ``None`` for a base view.
    region: Region | None = None

    def window(self, latents: np.ndarray) -> np.ndarray:
        return latents[:, :, self.rows, self.columns]


def view_windows(rows: int, columns: int, window: int, stride: int) -> list[tuple[slice, slice]]:
    """diffusers' MultiDiffusion windows over ``rows`` x ``columns`` latents, row by row.

    A side smaller than ``window`` is one whole window. Where the stride does not land on the far
    edge a last window is added flush with it, where diffusers would leave cells uncovered.
    """

    def starts(size: int) -> list[int]:
        if size <= window:
            return [0]
        positions = list(range(0, size - window + 1, stride))
        if positions[-1] + window < size:
            positions.append(size - window)
        return positions

    return [
        (slice(top, min(top + window, rows)), slice(left, min(left + window, columns)))
        for top in starts(rows)
        for left in starts(columns)
    ]


def unet_window(span: slice, size: int) -> slice:
    """``span`` grown to whole UNet cells within ``size`` latents (whole cells themselves)."""
    length = -(-(span.stop - span.start) // UNET_CELL) * UNET_CELL
    start = max(0, min(span.start, size - length))
    return slice(start, min(start + length, size))


def panorama(run: sd.Run, **options: Any) -> list[Image.Image]:
    """Generate ``generation.batch`` images by MultiDiffusion (``panorama_latents``'s options)."""
    return run.decode(panorama_latents(run, **options))


def panorama_latents(
    run: sd.Run,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
) -> np.ndarray:
    """The denoised latents of ``window``-cell views ``stride`` cells apart, and of the prompt's regions.

    The starting noise is onnx-web's seeded noise with the prompt's reseeds applied.
    """
    check_views(window, stride)
    generation = run.generation
    check_areas(parse_prompt(generation.prompt), generation.width, generation.height)
    regions, _ = region_tokens(generation.prompt)
    scheduler = run.scheduler()
    latents = run.starting_latents(scheduler, reseeded=True)
    views = base_views(run, latents.shape, window, stride) + region_views(run, regions, latents.shape)
    return multidiffusion(run, scheduler, latents, views)


def panorama_img2img(
    run: sd.Run,
    source: Image.Image,
    strength: float,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
) -> list[Image.Image]:
    """Re-generate ``source`` with ``strength`` of noise by MultiDiffusion over its whole latents."""
    if one_view(source, window, stride):
        # One view over the whole image is img2img: run that, on a GPU worker's CUDA graphs too.
        return img2img(run, source, strength)
    scheduler = run.scheduler()
    latents, timesteps, steps = noised_source(run, scheduler, source, strength)
    views = base_views(run, latents.shape, window, stride)
    return run.decode(multidiffusion(run, scheduler, latents, views, timesteps=timesteps, steps=steps))


def panorama_inpaint(
    run: sd.Run,
    source: Image.Image,
    mask: Image.Image,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
) -> list[Image.Image]:
    """Repaint the white part of ``mask`` in ``source`` by MultiDiffusion over its whole latents.

    A canvas wider or taller than one window (an outpainted panorama) is painted window by window
    and blended each step, where ``inpaint`` would run the UNet on all of it at once.
    """
    if one_view(source, window, stride):
        # One view over the whole image is inpainting: run that, on a GPU worker's CUDA graphs too.
        return inpaint(run, source, mask)
    generation = run.generation
    scheduler = run.scheduler()
    noise = sd.initial_latents(generation.seed, generation.batch, source.width, source.height)
    conditioning, after_step = inpaint_inputs(run, scheduler, source, mask, noise)
    views = base_views(run, noise.shape, window, stride)
    latents = noise * float(scheduler.init_noise_sigma)
    return run.decode(
        multidiffusion(run, scheduler, latents, views, conditioning=conditioning, after_step=after_step)
    )


def one_view(source: Image.Image, window: int, stride: int) -> bool:
    """Whether one view covers all of ``source``'s latents (the windows checked first)."""
    check_views(window, stride)
    rows, columns = source.height // sd.LATENT_FACTOR, source.width // sd.LATENT_FACTOR
    return len(view_windows(rows, columns, window, stride)) == 1


def windowed(generate: Callable[..., T], params: Mapping[str, Any]) -> Callable[..., T]:
    """``generate`` (``panorama``, ``panorama_img2img``, ``panorama_inpaint``) with the views the
    stage's ``params`` ask for (``view_options``)."""
    window, stride = view_options(params)
    return functools.partial(generate, window=window, stride=stride)


def view_options(params: Mapping[str, Any]) -> tuple[int, int]:
    """The view window and stride (latent cells) a stage's params ask for, as onnx-web sets them.

    The window is the UNet tile; windows start the tile less its ``unet_overlap`` share apart
    (contract §3.2): 512 px at the default 0.25 makes 64-cell windows 48 cells apart, and 0.75 (what
    onnx-web's docs suggest for panoramas) 16 apart: smoother seams, for three times the windows
    along a long panorama.
    """
    tile = int(params["unet_tile"])
    overlap = float(params["unet_overlap"])
    # Exported UNets take whole cells of UNET_CELL latents: a tile off that grid (params.json's step
    # of 128 px is not enforced) gets the whole cells it holds, at least one.
    window = max(UNET_CELL, tile // sd.LATENT_FACTOR // UNET_CELL * UNET_CELL)
    return window, max(1, int(tile * (1 - overlap)) // sd.LATENT_FACTOR)


def check_views(window: int, stride: int) -> None:
    """Refuse a view window or stride under one latent cell."""
    if window < 1 or stride < 1:
        raise ValueError(f"panorama window and stride must be >= 1 latent cell, got {window} and {stride}")


def base_views(run: sd.Run, shape: tuple[int, ...], window: int, stride: int) -> list[View]:
    """The MultiDiffusion windows over latents of ``shape``, all with the base prompt."""
    prompt, negative = sd.parse_prompts(run.generation)
    embeddings = prompt_conditioning(
        run, prompt.spans, negative.spans if negative else None, prompt.clip_skip
    )
    return [
        View(rows, columns, embeddings) for rows, columns in view_windows(shape[2], shape[3], window, stride)
    ]


def region_views(run: sd.Run, regions: Sequence[Region], shape: tuple[int, ...]) -> list[View]:
    """One view per region, its UNet window grown to whole UNet cells around the rectangle."""
    if not regions:
        return []
    base, negative = sd.parse_prompts(run.generation)
    views = []
    for region in regions:
        # The base prompt as written: its weights apply, its tokens are left out again.
        spans = parse_prompt(region.text(run.generation.prompt)).spans
        negative_spans = negative.spans if negative else None
        embeddings = prompt_conditioning(run, spans, negative_spans, base.clip_skip)
        rows, columns = region.rectangle.latent
        views.append(View(unet_window(rows, shape[2]), unet_window(columns, shape[3]), embeddings, region))
    return views


def prompt_conditioning(
    run: sd.Run, prompt: PromptText, negative_prompt: PromptText | None, clip_skip: int
) -> Any:
    """A view's text conditioning: SD's embeddings, or SDXL's for an ``SdxlRun`` (no clip skip)."""
    if isinstance(run, sdxl.SdxlRun):
        return sdxl.encode_prompt(run.model, prompt, negative_prompt, run.generation)
    return sd.encode_prompt(run.model, prompt, negative_prompt, run.generation, clip_skip)


def multidiffusion(
    run: sd.Run,
    scheduler: Any,
    latents: np.ndarray,
    views: Sequence[View],
    *,
    timesteps: Any = None,
    steps: int | None = None,
    conditioning: np.ndarray | None = None,
    after_step: Callable[[int, Any], Any] | None = None,
) -> np.ndarray:
    """The denoising loop: every view stepped on its own scheduler state, then averaged per cell.

    ``timesteps`` and ``steps`` (scheduler steps, for progress) default to the whole schedule, as
    in ``Run.denoise``; img2img passes the strength's tail. ``conditioning`` (an inpainting UNet's
    channels over the whole latents, doubled for guidance) gives each view its own window of them;
    ``after_step(index, latents)`` may replace the blended latents after each step (CPU tensors),
    as in ``Run.denoise``. ``sd.report_step`` is called per
    scheduler step with the whole wide latents (family ``sdxl`` for an ``SdxlRun``, else ``sd``),
    ``hooks.check_cancelled()`` after every UNet call.
    """
    import torch

    generation = run.generation
    on_sdxl = isinstance(run, sdxl.SdxlRun)
    unet = SdxlUNet(run.model) if on_sdxl else UNet(run.model.session("unet"))
    generator = sd.torch_generator(generation.seed)
    arguments = step_arguments(scheduler, eta=generation.eta, generator=generator)
    # Per-view state: multistep schedulers remember earlier outputs, which are the view's own.
    schedulers = [copy.deepcopy(scheduler) for _ in views]
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    steps = generation.steps if steps is None else steps
    total = len(timesteps)
    done = 0
    for index, t in enumerate(timesteps):
        last = index == total - 1
        value = np.zeros_like(latents)
        count = np.zeros_like(latents)
        for view, view_scheduler in zip(views, schedulers, strict=True):
            if view.region is not None and last:
                continue
            sample = torch.from_numpy(view.window(latents))
            doubled = torch.cat([sample] * 2) if generation.guidance else sample
            model_input = view_scheduler.scale_model_input(doubled, t).numpy()
            if conditioning is not None:
                model_input = np.concatenate([model_input, view.window(conditioning)], axis=1)
            noise = unet.predict(model_input, t, view.embeddings, generation)
            denoised = view_scheduler.step(
                torch.from_numpy(noise), t, sample, **arguments, return_dict=False
            )[0]
            accumulate(value, count, view, denoised.numpy())
            run.hooks.check_cancelled()
        latents = np.where(count > 0, value / np.where(count > 0, count, 1), value).astype(np.float32)
        if after_step is not None:
            latents = after_step(index, torch.from_numpy(latents)).numpy().astype(np.float32)
        if sd.counts_as_step(index, total, steps, scheduler.order):
            done += 1
            sd.report_step(run.hooks, done, "sdxl" if on_sdxl else "sd", latents)
    return latents


def accumulate(value: np.ndarray, count: np.ndarray, view: View, denoised: np.ndarray) -> None:
    """Add one view's denoised window to the running sums (a region's rectangle only, with its weight)."""
    region = view.region
    if region is None:
        value[:, :, view.rows, view.columns] += denoised
        count[:, :, view.rows, view.columns] += 1
        return
    rows, columns = region.rectangle.latent
    inside = denoised[
        :,
        :,
        rows.start - view.rows.start : rows.stop - view.rows.start,
        columns.start - view.columns.start : columns.stop - view.columns.start,
    ]
    mask = region.mask()
    if region.strength >= REPLACE_STRENGTH:
        # The base views' average where the feathered edge lets it through, the region elsewhere.
        sums, counts = value[:, :, rows, columns], count[:, :, rows, columns]
        average = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), sums)
        value[:, :, rows, columns] = average * (1 - mask) + inside * mask
        count[:, :, rows, columns] = 1
    else:
        value[:, :, rows, columns] += inside * region.strength * mask
        count[:, :, rows, columns] += region.strength * mask


class UNet:
    """An ONNX UNet session with the input types of its export."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.timestep_dtype = sd.input_type(session, "timestep", np.float32)
        shape = next(item.shape for item in session.get_inputs() if item.name == "timestep")
        #: Ours take one timestep per batch row, diffusers' export script a fixed number.
        self.timestep_count = shape[0] if shape and isinstance(shape[0], int) else None

    def predict(
        self, sample: np.ndarray, t: Any, embeddings: np.ndarray, generation: sd.Generation
    ) -> np.ndarray:
        """The noise prediction for ``sample`` (already scaled), guided as the generation asks."""
        noise = self.noise(sample, t, embeddings)
        if generation.guidance:
            uncond, text = np.split(noise, 2)
            noise = uncond + generation.cfg * (text - uncond)
        return noise

    def noise(self, sample: np.ndarray, t: Any, embeddings: np.ndarray) -> np.ndarray:
        """The UNet's output for every row of ``sample`` (already scaled), unguided."""
        count = self.timestep_count or len(sample)
        noise: np.ndarray = self.session.run(
            None,
            {
                "sample": sample.astype(np.float32),
                "timestep": np.full((count,), float(t), dtype=self.timestep_dtype),
                "encoder_hidden_states": embeddings,
            },
        )[0]
        return noise


class SdxlUNet:
    """An SDXL UNet on the model's ONNX Runtime session, predicting as ``UNet`` does."""

    def __init__(self, model: sd.DiffusionModel) -> None:
        self.model = model

    def predict(
        self, sample: np.ndarray, t: Any, conditioning: sdxl.SdxlConditioning, generation: sd.Generation
    ) -> np.ndarray:
        """The noise prediction for ``sample`` (already scaled), guided as the generation asks."""
        import torch

        unet = self.model.session("unet")
        calls = sd.session_calls(unet, conditioning.hidden, sdxl.added_inputs(conditioning))
        noise: np.ndarray = calls.predict(torch.from_numpy(sample.astype(np.float32)), t).numpy()
        if generation.guidance:
            uncond, text = np.split(noise, 2)
            noise = uncond + generation.cfg * (text - uncond)
        return noise

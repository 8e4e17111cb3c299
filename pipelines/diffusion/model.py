"""What txt2img, img2img and inpaint share: the model folder, prompt encoding, the UNet loop, the VAE.

The numerics follow diffusers' PyTorch ``StableDiffusionPipeline`` step for step (same scheduler
calls, same guidance arithmetic, same image post-processing), with the models on ONNX Runtime,
so our images match diffusers' reference on the same weights to a fraction of a pixel level.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from pipelines.context import SessionProvider, StageContext, StageImage
from pipelines.diffusion.networks import (
    INVERSION_FOLDER,
    LORA_FOLDER,
    NO_NETWORKS,
    Blend,
    inversion_tokenizer,
    network_file,
    prompt_blend,
)
from pipelines.diffusion.prompt import (
    ALTERNATIVE_PIPELINES,
    ParsedPrompt,
    PromptText,
    Reseed,
    TokenWindows,
    expand_alternatives,
    parse_prompt,
    prompt_windows,
    weight_embeddings,
)
from pipelines.diffusion.prompt_grammar import check_areas
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler, step_arguments
from pipelines.diffusion.vae_tiling import VaeTiling, decode_tiled, encode_tiled
from pipelines.imageops.metadata import uploaded
from pipelines.models.layout import ONNX_FILE, read_model_hash
from pipelines.models.sessions import SessionCache

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 4
#: Pixels per latent cell of SD's VAE.
LATENT_FACTOR = 8
#: ``<reseed:...:-1>`` seeds are drawn from 1 up to this, excluded, as onnx-web draws them.
RESEED_LIMIT = 2**32
#: Text encoder outputs ``clip_skip.k``: the state k layers from the end, through the final LayerNorm.
CLIP_SKIP_OUTPUT = "clip_skip."
#: SD 1.x's latent scaling factor, used when a model folder does not say otherwise.
DEFAULT_SCALING_FACTOR = 0.18215
#: ONNX tensor types to numpy, for the inputs whose type differs between exports.
ONNX_TYPES: Mapping[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
FP16 = "tensor(float16)"
#: The ONNX float types ``Fp32Feeds`` casts feeds to.
FLOAT_TYPES = ("tensor(float)", FP16, "tensor(double)")
#: Keys a diffusion stage copies from its params into the metadata ``params`` (contract §7.3).
METADATA_PARAMS = (
    "model",
    "pipeline",
    "scheduler",
    "prompt",
    "negative_prompt",
    "cfg",
    "seed",
    "steps",
    "eta",
    "batch",
    "control",
    "input_prompt",
    "input_negative_prompt",
    "loopback",
    "tiled_vae",
    "unet_overlap",
    "unet_tile",
    "vae_overlap",
    "vae_tile",
    "denoise",
    "thumbnail",
)

StepCallback = Callable[[int], None]
CancelCheck = Callable[[], None]
#: ``(steps done so far in this loop, model family "sd" | "sdxl", latents getter)``, after each
#: counted scheduler step: the worker's live preview (``pipelines.diffusion.preview``). The getter
#: returns the scheduler's current sample as a float32 ``(batch, 4, h, w)`` numpy copy; the loop
#: copies nothing unless it is called, and it must be called before the callback returns (on the
#: CUDA path the latents are still being stepped on the GPU).
LatentsCallback = Callable[[int, str, Callable[[], np.ndarray]], None]


class StepHooks(Protocol):
    """Where a diffusion loop reports: a ``StageContext`` is one, a batched job (``Txt2ImgJob``) another."""

    @property
    def on_step(self) -> StepCallback:
        """Called with 1 after each scheduler step."""
        ...

    @property
    def check_cancelled(self) -> CancelCheck:
        """Called after every UNet call; raises to stop the run."""
        ...

    @property
    def on_latents(self) -> LatentsCallback:
        """Called right after each ``on_step(1)`` with the loop's latents (see ``LatentsCallback``)."""
        ...


@dataclass(frozen=True)
class Callbacks:
    """``StepHooks`` from plain functions; by default progress and latents are ignored, nothing cancels."""

    on_step: StepCallback = lambda n: None
    check_cancelled: CancelCheck = lambda: None
    on_latents: LatentsCallback = lambda step, family, latents: None


def latents_getter(sample: Any) -> Callable[[], np.ndarray]:
    """A function returning ``sample`` (numpy, or a torch tensor on any device) as a float32 numpy copy.

    Nothing is copied until it is called: most steps' previews are skipped by the worker's throttle.
    """

    def latents() -> np.ndarray:
        if isinstance(sample, np.ndarray):
            return sample.astype(np.float32)
        import torch

        copied: np.ndarray = sample.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()
        return copied

    return latents


def report_step(hooks: StepHooks, done: int, family: str, sample: Any) -> None:
    """Report a finished scheduler step: ``on_step(1)``, then ``on_latents`` with ``sample``'s getter.

    ``done`` counts the loop's scheduler steps so far, this one included; ``sample`` is the
    scheduler's latents (not the UNet's doubled guidance input).
    """
    hooks.on_step(1)
    hooks.on_latents(done, family, latents_getter(sample))


@dataclass(frozen=True)
class Generation:
    """The resolved image parameters every diffusion stage reads (contract §3.2)."""

    model: str
    scheduler: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    cfg: float
    eta: float
    batch: int
    width: int
    height: int
    #: Run the VAE in overlapping tiles (``tiled_vae``); ``None`` runs it on the whole image.
    vae_tiling: VaeTiling | None = None
    #: Cycle the prompts' ``(a|b)`` groups per UNet call (``ALTERNATIVE_PIPELINES``); else they are text.
    alternatives: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Generation:
        """Read the generation parameters from a stage's resolved params dict."""
        values = {
            "model": str(params["model"]),
            "scheduler": str(params["scheduler"]),
            "prompt": str(params["prompt"]),
            "negative_prompt": params["negative_prompt"] or None,
            "seed": int(params["seed"]),
            "steps": int(params["steps"]),
            "cfg": float(params["cfg"]),
            "eta": float(params["eta"]),
            "batch": int(params["batch"]),
            "width": int(params["width"]),
            "height": int(params["height"]),
            "vae_tiling": VaeTiling.from_params(params),
            "alternatives": params.get("pipeline") in ALTERNATIVE_PIPELINES,
            **overrides,
        }
        generation = cls(**values)
        generation.validate()
        return generation

    def validate(self) -> None:
        """Reject values the pipeline cannot run (the api checks ranges; this guards the maths)."""
        if self.seed < 0:
            raise ValueError(f"seed must be resolved to a value >= 0 before the stage runs, got {self.seed}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.width % LATENT_FACTOR or self.height % LATENT_FACTOR or self.width < 8 or self.height < 8:
            raise ValueError(
                f"width and height must be positive multiples of 8, got {self.width}x{self.height}"
            )

    @property
    def guidance(self) -> bool:
        """Classifier-free guidance is on above 1.0, as in diffusers."""
        return self.cfg > 1.0


class Fp32Feeds:
    """A session whose graph declares fp16 inputs or outputs, fed and read in fp32.

    The loops compute in fp32 (guidance, scheduler steps), as diffusers does. A fused CUDA folder
    (``convert --optimize gpu``) takes and gives fp16 but for its timestep; before this, every loop
    but the CUDA txt2img path handed it fp32 and ONNX Runtime refused the call. Each float feed is
    cast to its input's declared type and each fp16 result comes back as fp32; anything else
    passes through to the session.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.types = {
            item.name: ONNX_TYPES[item.type] for item in session.get_inputs() if item.type in FLOAT_TYPES
        }

    @classmethod
    def wrap(cls, session: Any) -> Any:
        """``session`` itself when its graph is fp16 nowhere, else the session behind ``Fp32Feeds``."""
        declared = [item.type for item in (*session.get_inputs(), *session.get_outputs())]
        return cls(session) if FP16 in declared else session

    def run(self, output_names: Any, feeds: Mapping[str, Any], *args: Any) -> list[Any]:
        typed = {name: self._typed(name, value) for name, value in feeds.items()}
        results = self.session.run(output_names, typed, *args)
        return [
            result.astype(np.float32)
            if isinstance(result, np.ndarray) and result.dtype == np.float16
            else result
            for result in results
        ]

    def _typed(self, name: str, value: Any) -> Any:
        wanted = self.types.get(name)
        if wanted is None or not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            return value
        return value.astype(wanted, copy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


@dataclass(frozen=True)
class DiffusionModel:
    """A Stable Diffusion folder in diffusers' ONNX layout, with sessions from the worker's cache.

    ``networks`` are the LoRAs and inversions blended into its UNet and text encoders (in memory,
    by the session cache); ``models_path`` is where their ``lora/`` and ``inversion/`` folders are.
    """

    folder: Path
    sessions: SessionProvider
    models_path: Path | None = None
    networks: Blend = NO_NETWORKS

    def session(self, component: str) -> Any:
        """The ONNX Runtime session of ``component`` (``unet``, ``vae_decoder``, ...); one whose
        graph takes or gives fp16 comes as ``Fp32Feeds``, so the loops' fp32 arrays fit it."""
        path = self.folder / component / ONNX_FILE
        variant = self.networks.variant(component)
        if variant is None:
            session = self.sessions.get(path)
        elif not isinstance(self.sessions, SessionCache):
            raise TypeError(f"{type(self.sessions).__name__} cannot blend networks into {component}")
        else:
            session = self.sessions.get(path, variant)
        return Fp32Feeds.wrap(session)

    @property
    def tokenizer(self) -> Any:
        return self.tokenizer_of("tokenizer")

    def tokenizer_of(self, name: str) -> Any:
        """Tokenizer folder ``name`` (``tokenizer``, ``tokenizer_2``), with the inversions' tokens."""
        if self.networks.inversions:
            return inversion_tokenizer(self.folder / name, self.networks.inversions)
        return load_tokenizer(self.folder / name)

    def with_networks(self, prompt: ParsedPrompt, negative: ParsedPrompt | None) -> DiffusionModel:
        """This model with the networks the prompts name blended in (none: the model as it is).

        Networks missing from the models folder are skipped with a warning, as in onnx-web (the
        api refuses such prompts before they become jobs: ``networks.unknown_networks``).
        """
        if self.models_path is None:
            return self
        networks = prompt_blend(self.models_path, (prompt, negative))
        return self if networks == self.networks else replace(self, networks=networks)

    @property
    def scaling_factor(self) -> float:
        return vae_scaling_factor(self.folder)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell of this model's VAE: 8 for SD, 4 for the x4 upscaler."""
        return vae_factor(self.folder)

    @property
    def hash(self) -> str:
        return read_model_hash(self.folder)

    def scheduler(self, name: str, seed: int) -> Any:
        """A fresh scheduler ``name`` (schedulers keep per-run state) from this model's config."""
        return make_scheduler(name, load_scheduler_config(self.folder), seed=seed)


def model_folder(models_path: Path, name: str) -> Path:
    """Join a model name onto the models folder, dropping ``..`` and anchors (contract §3.2)."""
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("/", ".", "..")]
    if not parts:
        raise ValueError(f"invalid model name {name!r}")
    return models_path.joinpath(*parts)


def load_model(models_path: Path, name: str, sessions: SessionProvider) -> DiffusionModel:
    """The diffusion model ``name`` under ``models_path``; fails if it is not a model folder."""
    folder = model_folder(models_path, name)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusion model named {name!r} in the models folder")
    return DiffusionModel(folder, sessions, models_path=models_path)


@lru_cache(maxsize=16)
def load_tokenizer(folder: Path) -> Any:
    """The CLIP tokenizer of a model folder, kept across jobs (it is read-only and slow to build)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


@lru_cache(maxsize=16)
def vae_config(folder: Path) -> dict[str, Any]:
    """The VAE's diffusers config (``vae_decoder/config.json``), or ``{}`` for folders without one."""
    try:
        config: dict[str, Any] = json.loads((folder / "vae_decoder" / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config


def vae_scaling_factor(folder: Path) -> float:
    """The VAE's latent scaling factor from its config, else SD 1.x's."""
    return float(vae_config(folder).get("scaling_factor", DEFAULT_SCALING_FACTOR))


def vae_factor(folder: Path) -> int:
    """Pixels per latent cell: the VAE up-samples once between each pair of its blocks."""
    blocks = vae_config(folder).get("block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else LATENT_FACTOR


def input_type(session: Any, name: str, default: Any) -> Any:
    """The numpy dtype a session expects for input ``name``."""
    for item in session.get_inputs():
        if item.name == name:
            return ONNX_TYPES.get(item.type, default)
    return default


def encode_text(model: DiffusionModel, windows: np.ndarray, clip_skip: int = 0) -> np.ndarray:
    """Run the text encoder on token windows; returns ``(1, windows * 77, hidden)``.

    ``clip_skip`` k > 1 conditions on the output k layers from the end, through the final
    LayerNorm (the converter's ``clip_skip.k`` outputs; diffusers' ``clip_skip=k-1``). An encoder
    converted without them, or a k deeper than it has, is logged and gives the nearest it has.
    """
    session = model.session("text_encoder")
    ids = windows.astype(input_type(session, "input_ids", np.int32))
    output = clip_skip_output(session, clip_skip)
    hidden = session.run([output] if output else None, {"input_ids": ids})[0]
    return hidden.reshape(1, -1, hidden.shape[-1])


def clip_skip_output(session: Any, clip_skip: int) -> str | None:
    """The text encoder output ``<clip:skip:clip_skip>`` reads, or None for the first (no skip)."""
    if clip_skip <= 1:
        return None
    available = sorted(
        int(name.removeprefix(CLIP_SKIP_OUTPUT))
        for output in session.get_outputs()
        if (name := output.name).startswith(CLIP_SKIP_OUTPUT)
    )
    if not available:
        logger.warning(
            "<clip:skip:%d> needs a text encoder converted with clip_skip outputs; ignored", clip_skip
        )
        return None
    if clip_skip > available[-1]:
        logger.warning("<clip:skip:%d> is deeper than the text encoder; using %d", clip_skip, available[-1])
    return f"{CLIP_SKIP_OUTPUT}{min(clip_skip, available[-1])}"


def encode_prompt(
    model: DiffusionModel,
    prompt: PromptText,
    negative_prompt: PromptText | None,
    generation: Generation,
    clip_skip: int = 0,
    *,
    windows: int = 1,
) -> np.ndarray:
    """Prompt embeddings for the UNet: ``[negative] * batch + [prompt] * batch`` with guidance.

    ``prompt`` and ``negative_prompt`` are already free of network tokens: plain text, or a parsed
    prompt's weighted spans. Without guidance the negative prompt is not encoded at all, as in
    diffusers. ``clip_skip`` (the prompt's ``<clip:skip:k>``) applies to both, as in diffusers.
    Both are padded to the longer's token windows, and to at least ``windows``.
    """
    tokenizer = model.tokenizer
    positive = prompt_windows(tokenizer, prompt)
    if not generation.guidance:
        padded = positive.padded(tokenizer, max(len(positive.ids), windows))
        return np.repeat(encode_weighted(model, padded, clip_skip), generation.batch, axis=0)
    negative = prompt_windows(tokenizer, negative_prompt or "")
    count = max(len(positive.ids), len(negative.ids), windows)
    if count > 1:
        logger.debug("long prompt: %d windows of %d tokens", count, tokenizer.model_max_length)
    positive_embeds = encode_weighted(model, positive.padded(tokenizer, count), clip_skip)
    negative_embeds = encode_weighted(model, negative.padded(tokenizer, count), clip_skip)
    return np.concatenate(
        [
            np.repeat(negative_embeds, generation.batch, axis=0),
            np.repeat(positive_embeds, generation.batch, axis=0),
        ]
    )


def encode_weighted(model: DiffusionModel, windows: TokenWindows, clip_skip: int = 0) -> np.ndarray:
    """``encode_text`` on the windows' ids, each token's embedding weighted as lpw does."""
    return weight_embeddings(encode_text(model, windows.ids, clip_skip), windows.weights)


def initial_latents(seed: int, batch: int, width: int, height: int) -> np.ndarray:
    """onnx-web's starting noise: ``default_rng(seed)`` normals of shape (batch, 4, h/8, w/8)."""
    shape = (batch, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reseed_latents(noise: np.ndarray, reseeds: Sequence[Reseed], seed: int) -> np.ndarray:
    """``noise`` with each ``<reseed>`` rectangle's cells drawn from the token's own seed, as
    onnx-web's txt2img stage reseeds its starting latents (contract §9.1).

    A ``-1`` seed is drawn, in token order, from ``RandomState(seed)`` as onnx-web's
    ``random_integers(2**32 - 1)`` draws it, so the same request gives the same image.

    Raises:
        ValueError: a rectangle off the 8-pixel grid or outside the latents' image.
    """
    if not reseeds:
        return noise
    batch, _, rows, columns = noise.shape
    check_areas(ParsedPrompt(reseeds=list(reseeds)), columns * LATENT_FACTOR, rows * LATENT_FACTOR)
    result = noise.copy()
    # randint(1, 2**32) is what numpy's deprecated random_integers(2**32 - 1) calls: the same draws.
    seeds = np.random.RandomState(seed)
    for reseed in reseeds:
        region_seed = (
            int(seeds.randint(1, RESEED_LIMIT, dtype=np.int64)) if reseed.seed == -1 else reseed.seed
        )
        width, height = reseed.right - reseed.left, reseed.bottom - reseed.top
        result[
            :,
            :,
            reseed.top // LATENT_FACTOR : reseed.bottom // LATENT_FACTOR,
            reseed.left // LATENT_FACTOR : reseed.right // LATENT_FACTOR,
        ] = initial_latents(region_seed, batch, width, height)
    return result


def torch_generator(seed: int) -> Any:
    """The seeded CPU generator stochastic schedulers draw their step noise from."""
    import torch

    return torch.Generator().manual_seed(seed)


def counts_as_step(index: int, total: int, steps: int, order: int) -> bool:
    """Whether UNet call ``index`` of ``total`` completes a scheduler step.

    Second-order schedulers (heun, k-dpm-2, dpm-sde) call the UNet about twice per step; a
    "step" in progress is a scheduler step, so a job reports exactly ``steps`` of them, counted
    as diffusers counts its progress bar.
    """
    warmup = total - steps * order
    return index == total - 1 or (index + 1 > warmup and (index + 1) % order == 0)


@dataclass(frozen=True)
class Run:
    """One diffusion task's model, parameters and hooks: what every step of the task needs."""

    model: DiffusionModel
    generation: Generation
    hooks: StepHooks = Callbacks()

    def __post_init__(self) -> None:
        # The LoRAs and inversions a prompt names belong to this run's model: every session it
        # asks for (text encoders, UNet) is the blended one, and the next run's prompt decides anew.
        object.__setattr__(self, "model", self.model.with_networks(*parse_prompts(self.generation)))

    def prompt_embeddings(self) -> np.ndarray:
        """``encode_prompt`` on the generation's weighted prompts, tokens removed (SD 1.x's one encoder)."""
        prompt, negative = parse_prompts(self.generation)
        negative_spans = negative.spans if negative else None
        return encode_prompt(self.model, prompt.spans, negative_spans, self.generation, prompt.clip_skip)

    def embeddings_by_call(self) -> list[np.ndarray]:
        """The embeddings of each UNet call in turn: call *k* takes entry ``k % len``.

        One entry (``prompt_embeddings``), unless the generation cycles alternatives and its
        prompts have ``(a|b)`` groups: then one per prompt they make, the prompt and negative
        prompt lists each repeated in turn to the longer's length, as onnx-web pairs them, and all
        encoded to the same number of token windows, so every call has one shape.
        """
        generation = self.generation
        if not generation.alternatives:
            return [self.prompt_embeddings()]
        prompts = expand_alternatives(generation.prompt)
        negatives = (
            [None] if generation.negative_prompt is None else expand_alternatives(generation.negative_prompt)
        )
        if len(prompts) == len(negatives) == 1:
            return [self.prompt_embeddings()]
        count = max(len(prompts), len(negatives))
        pairs = [
            (parse_prompt(prompts[index % len(prompts)]), _parsed(negatives[index % len(negatives)]))
            for index in range(count)
        ]
        # Without guidance no negative prompt is encoded, so only the prompts' windows count.
        encoded = [pair if generation.guidance else pair[:1] for pair in pairs]
        tokenizer = self.model.tokenizer
        windows = max(
            len(prompt_windows(tokenizer, parsed.spans).ids)
            for pair in encoded
            for parsed in pair
            if parsed is not None
        )
        return [
            encode_prompt(
                self.model,
                prompt.spans,
                negative.spans if negative else None,
                generation,
                prompt.clip_skip,
                windows=windows,
            )
            for prompt, negative in pairs
        ]

    def scheduler(self) -> Any:
        """A fresh scheduler (schedulers keep per-run state), seeded and set to the generation's steps."""
        scheduler = self.model.scheduler(self.generation.scheduler, self.generation.seed)
        scheduler.set_timesteps(self.generation.steps)
        return scheduler

    def starting_latents(self, scheduler: Any, *, reseeded: bool = False) -> np.ndarray:
        """onnx-web's seeded noise at the generation's size, scaled for ``scheduler``'s first step.

        ``reseeded`` applies the prompt's ``<reseed>`` tokens (``reseed_latents``): the txt2img
        tasks ask for it (txt2img, SDXL, panorama), as onnx-web's txt2img stage reseeds; the
        img2img route's tasks that start from noise (ControlNet, pix2pix) do not, as onnx-web's do not.
        """
        generation = self.generation
        noise = initial_latents(generation.seed, generation.batch, generation.width, generation.height)
        if reseeded:
            noise = reseed_latents(noise, parse_prompt(generation.prompt).reseeds, generation.seed)
        # init_noise_sigma is a tensor for the Karras-style schedulers; float() keeps numpy maths.
        latents: np.ndarray = noise * float(scheduler.init_noise_sigma)
        return latents

    #: The family ``report_step`` names to previews: ``sd`` (SD 1.x/2.x latents) or ``sdxl``.
    family: ClassVar[str] = "sd"

    def denoise(
        self,
        scheduler: Any,
        latents: np.ndarray,
        embeddings: np.ndarray | Sequence[np.ndarray],
        *,
        timesteps: Any = None,
        steps: int | None = None,
        conditioning: np.ndarray | None = None,
        after_step: Callable[[int, Any], Any] | None = None,
        extra_inputs: Mapping[str, np.ndarray] | None = None,
        unet: Any = None,
    ) -> np.ndarray:
        """Run the UNet loop over ``timesteps`` from ``latents`` (already scaled for the scheduler).

        ``embeddings`` are the UNet's text embeddings, or a list of them taken in turn per UNet
        call (``embeddings_by_call``). ``timesteps`` and ``steps`` (scheduler steps, for progress)
        default to the whole schedule.
        ``conditioning`` (an inpainting UNet's mask and masked-image latents, already doubled for
        guidance) is appended to the UNet input channels after the scheduler scales the latents.
        ``extra_inputs`` are further UNet inputs given unchanged at every step (the x4 upscaler's
        ``class_labels``). ``unet`` is a session-like UNet (``get_inputs`` and ``run``) to call
        instead of the model's own (a ControlNet's, which adds its residuals).
        ``after_step(index, latents)`` may replace the latents after each scheduler step (a
        4-channel UNet's inpainting puts the kept region back); it gets and returns CPU tensors.
        ``report_step`` is called per scheduler step and ``hooks.check_cancelled()`` after every
        UNet call. Where the UNet runs is ``unet_calls``'s choice.
        """
        calls = self.unet_calls(embeddings, extra_inputs or {}, unet)
        return run_loop(
            self,
            calls,
            scheduler,
            latents,
            timesteps=timesteps,
            steps=steps,
            conditioning=conditioning,
            after_step=after_step,
        )

    def unet_calls(
        self,
        embeddings: np.ndarray | Sequence[np.ndarray],
        extra_inputs: Mapping[str, np.ndarray],
        unet: Any,
    ) -> UnetCalls:
        """This run's UNet calls: the CUDA-graph path on a GPU worker (``pipelines.gpu.runtime``),
        else the worker's ONNX Runtime session, or ``unet`` where one is given. Embeddings that
        change per call (alternatives) stay on the session: a graph holds one set."""
        cycle = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
        if len(cycle) > 1:
            return session_calls(self.model.session("unet") if unet is None else unet, cycle, extra_inputs)
        embeddings = cycle[0]
        if unet is None:
            from pipelines.gpu.runtime import graph_calls

            on_gpu = graph_calls(self.model, {"encoder_hidden_states": embeddings, **extra_inputs})
            if on_gpu is not None:
                return on_gpu
        return session_calls(self.model.session("unet") if unet is None else unet, embeddings, extra_inputs)

    def decode(self, latents: np.ndarray) -> list[Image.Image]:
        """``decode_images`` with the generation's VAE tiling."""
        return decode_images(self.model, latents, self.generation.vae_tiling)


#: ``predict(model_input, t)``: the UNet's output (the noise, or the velocity of a v-prediction
#: model) for ``model_input`` (scaled by the scheduler, conditioning channels joined) at scheduler
#: timestep ``t``, unguided, as an fp32 torch tensor the caller owns.
Predict = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class UnetCalls:
    """Where a UNet loop runs: its ``predict``, the torch device its latents live on, and the
    stream its torch work is queued on (a GPU model's own; none on the CPU)."""

    predict: Predict
    device: Any
    stream: Callable[[], AbstractContextManager[Any]] = nullcontext


def session_calls(
    unet: Any, embeddings: np.ndarray | Sequence[np.ndarray], extra_inputs: Mapping[str, np.ndarray]
) -> UnetCalls:
    """UNet calls on an ONNX Runtime session (or a session-like UNet), through numpy on the CPU.

    A list of ``embeddings`` is taken in turn, one per call, as onnx-web's UNet cycles a prompt's
    alternatives (per UNet call, so a second-order scheduler's two calls of a step take two).
    """
    import torch

    cycle = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
    calls = itertools.count()

    timestep_dtype = input_type(unet, "timestep", np.float32)
    timestep_shape = next(item.shape for item in unet.get_inputs() if item.name == "timestep")

    def predict(model_input: Any, t: Any) -> Any:
        # Exports differ: ours take one timestep per batch item, diffusers' script a fixed-size one.
        count = (
            timestep_shape[0] if timestep_shape and isinstance(timestep_shape[0], int) else len(model_input)
        )
        feeds = {
            "sample": model_input.numpy().astype(np.float32),
            "timestep": np.full((count,), float(t), dtype=timestep_dtype),
            "encoder_hidden_states": cycle[next(calls) % len(cycle)],
            **extra_inputs,
        }
        return torch.from_numpy(unet.run(None, feeds)[0]).float()

    return UnetCalls(predict, torch.device("cpu"))


def run_loop(
    run: Run,
    calls: UnetCalls,
    scheduler: Any,
    latents: np.ndarray,
    *,
    timesteps: Any = None,
    steps: int | None = None,
    conditioning: np.ndarray | None = None,
    after_step: Callable[[int, Any], Any] | None = None,
) -> np.ndarray:
    """``denoise_loop`` from and back to numpy, on ``calls``'s device and stream.

    ``after_step`` gets the latents on the CPU and its result goes back to the device: a copy of
    the latents each way per step on a GPU, small beside a UNet call.
    """
    import torch

    device = calls.device
    on_device = after_step
    if after_step is not None and device.type != "cpu":

        def on_device(index: int, sample: Any) -> Any:
            return after_step(index, sample.cpu()).to(device)

    with calls.stream():
        sample = denoise_loop(
            run,
            calls.predict,
            scheduler,
            torch.from_numpy(latents).to(device),
            timesteps=timesteps,
            steps=steps,
            channels=None if conditioning is None else torch.from_numpy(conditioning).to(device),
            after_step=on_device,
        )
        result: np.ndarray = sample.cpu().numpy()
    return result


def denoise_loop(
    run: Run,
    predict: Predict,
    scheduler: Any,
    sample: Any,
    *,
    timesteps: Any = None,
    steps: int | None = None,
    channels: Any = None,
    after_step: Callable[[int, Any], Any] | None = None,
) -> Any:
    """The UNet loop on torch tensors (on any device) from ``sample`` (already scaled for the scheduler).

    ``timesteps`` and ``steps`` default to the whole schedule; ``channels`` are joined to the
    UNet's input after the scheduler scales it; ``after_step(index, sample)`` may replace the
    latents after each scheduler step. Each scheduler step is reported with ``report_step``
    (``run.family``) and ``run.hooks.check_cancelled()`` is called after every UNet call.
    """
    import torch

    generation = run.generation
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    steps = generation.steps if steps is None else steps
    arguments = step_arguments(scheduler, eta=generation.eta, generator=torch_generator(generation.seed))
    total = len(timesteps)
    done = 0
    for index, t in enumerate(timesteps):
        doubled = torch.cat([sample] * 2) if generation.guidance else sample
        model_input = scheduler.scale_model_input(doubled, t)
        if channels is not None:
            model_input = torch.cat([model_input, channels], dim=1)
        prediction = predict(model_input, t)
        if generation.guidance:
            uncond, text = prediction.chunk(2)
            prediction = uncond + generation.cfg * (text - uncond)
        sample = scheduler.step(prediction, t, sample, **arguments, return_dict=False)[0]
        if after_step is not None:
            sample = after_step(index, sample)
        if counts_as_step(index, total, steps, scheduler.order):
            done += 1
            report_step(run.hooks, done, run.family, sample)
        run.hooks.check_cancelled()
    return sample


def decode_images(
    model: DiffusionModel, latents: np.ndarray, tiling: VaeTiling | None = None
) -> list[Image.Image]:
    """Decode latents to RGB images: on the VAE decoder's CUDA graphs on a GPU worker (whole
    images), else ``decode_latents`` on the worker's session."""
    if tiling is None:
        from pipelines.gpu.runtime import graph_decode

        images = graph_decode(model, latents)
        if images is not None:
            return images
    return decode_latents(model, latents, tiling)


def decode_latents(
    model: DiffusionModel, latents: np.ndarray, tiling: VaeTiling | None = None
) -> list[Image.Image]:
    """Decode latents to RGB images, one at a time (and tile by tile with ``tiling``) to bound memory."""
    session = model.session("vae_decoder")
    scaled = (latents / model.scaling_factor).astype(input_type(session, "latent_sample", np.float32))

    def run(sample: np.ndarray) -> np.ndarray:
        decoded: np.ndarray = session.run(None, {"latent_sample": sample})[0]
        return decoded

    images = []
    for index in range(len(scaled)):
        one = scaled[index : index + 1]
        pixels = (run(one) if tiling is None else decode_tiled(run, one, tiling, model.vae_factor))[0]
        pixels = np.clip(pixels / 2 + 0.5, 0, 1).transpose(1, 2, 0)
        images.append(Image.fromarray((pixels * 255).round().astype(np.uint8)))
    return images


#: Every SD UNet halves its latents three times: exported graphs need sizes in whole 64-px cells.
UNET_GRID = 64


def grid_size(width: int, height: int, grid: int = UNET_GRID) -> tuple[int, int]:
    """``width`` x ``height`` rounded up to whole cells of ``grid`` pixels (by default the UNet's)."""
    return (-(-width // grid) * grid, -(-height // grid) * grid)


def pad_to_grid(image: Image.Image, fill: str | None = None, grid: int = UNET_GRID) -> Image.Image:
    """``image`` grown right and bottom to whole cells of ``grid``: edge pixels repeated, or ``fill``."""
    size = grid_size(*image.size, grid)
    if size == image.size:
        return image
    if fill is not None:
        canvas = Image.new(image.mode, size, fill)
        canvas.paste(image, (0, 0))
        return canvas
    pixels = np.asarray(image)
    pad = ((0, size[1] - image.height), (0, size[0] - image.width)) + ((0, 0),) * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, pad, mode="edge"))


def fit_to_latent_grid(image: Image.Image) -> Image.Image:
    """``image`` in RGB, shrunk with Lanczos to multiples of 8 pixels if needed, as diffusers does."""
    image = image.convert("RGB")
    width, height = (side - side % LATENT_FACTOR for side in image.size)
    if width < LATENT_FACTOR or height < LATENT_FACTOR:
        raise ValueError(f"image of {image.width}x{image.height} is smaller than one latent cell")
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a ``(1, 3, H, W)`` float32 array in [-1, 1], as diffusers preprocesses it."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return (pixels * 2.0 - 1.0).transpose(2, 0, 1)[None]


def unet_channels(model: DiffusionModel) -> int:
    """Input channels of the model's UNet: 4, or 9 for an inpainting UNet."""
    shape = model.session("unet").get_inputs()[0].shape
    return int(shape[1])


def encode_image(model: DiffusionModel, pixels: np.ndarray, tiling: VaeTiling | None = None) -> np.ndarray:
    """Scaled VAE latents of ``(1, 3, H, W)`` pixels in [-1, 1], tile by tile with ``tiling``."""
    session = model.session("vae_encoder")

    def run(sample: np.ndarray) -> np.ndarray:
        encoded: np.ndarray = session.run(None, {"sample": sample})[0]
        return encoded

    sample = pixels.astype(np.float32)
    latents = run(sample) if tiling is None else encode_tiled(run, sample, tiling, model.vae_factor)
    scaled: np.ndarray = latents * np.float32(model.scaling_factor)
    return scaled


def file_hash(path: Path) -> str:
    """Upper-case SHA-256 of a network file (contract §7.3), read once per version of the file.

    Every output's metadata names its networks' hashes; a LoRA is often 100 MB or more, so the
    digest is kept while the file's size and modification time stay the same.
    """
    stat = path.stat()
    return _file_hash(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().upper()


def network_entries(models_path: Path, kind: str, networks: list[Any]) -> list[dict[str, Any]]:
    """Metadata entries for LoRAs (``kind="lora"``) or inversions named by prompt tokens."""
    entries = []
    for network in networks:
        # The file the blend loads (not a sidecar such as name.preview.png, or a glob's first match).
        path = network_file(models_path, kind, network.name)
        entries.append(
            {"name": network.name, "weight": network.weight, "hash": file_hash(path) if path else "unknown"}
        )
    return entries


def _parsed(prompt: str | None) -> ParsedPrompt | None:
    return None if prompt is None else parse_prompt(prompt)


def parse_prompts(generation: Generation) -> tuple[ParsedPrompt, ParsedPrompt | None]:
    """The prompt and negative prompt with their tokens removed (the negative's networks count too)."""
    return parse_prompt(generation.prompt), _parsed(generation.negative_prompt)


def generation_metadata(
    params: Mapping[str, Any],
    generation: Generation,
    model: DiffusionModel,
    models_path: Path,
    *,
    input_size: Mapping[str, int],
    size: tuple[int, int],
    extra_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata JSON of one generated image (contract §7.3)."""
    prompt, negative = parse_prompts(generation)
    loras = prompt.loras + (negative.loras if negative else [])
    inversions = prompt.inversions + (negative.inversions if negative else [])
    recorded = {key: params[key] for key in METADATA_PARAMS}
    recorded.update(
        model=generation.model,
        scheduler=generation.scheduler,
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt,
        cfg=generation.cfg,
        seed=generation.seed,
        steps=generation.steps,
        eta=generation.eta,
        batch=generation.batch,
    )
    recorded.update(extra_params or {})
    return {
        "input_size": dict(input_size),
        "params": recorded,
        "models": [{"name": generation.model, "hash": model.hash, "weight": 1.0}],
        "loras": network_entries(models_path, LORA_FOLDER, loras),
        "inversions": network_entries(models_path, INVERSION_FOLDER, inversions),
        "size": {"width": size[0], "height": size[1]},
    }


def stage_sources(ctx: StageContext, params: Mapping[str, Any], images: list[StageImage]) -> list[StageImage]:
    """The images an image-to-image stage works on: its inputs, else the stage's uploaded source."""
    if images:
        return images
    upload = ctx.inputs.get(f"source:{params.get('stage_name', '')}")
    if upload is None:
        raise ValueError("this stage needs an input image: none came from earlier stages or a source upload")
    return [uploaded(upload)]


def input_size(item: StageImage) -> dict[str, int]:
    """The size of the job's input: what ``item`` records of it, else ``item``'s own (it is the input)."""
    recorded: dict[str, int] = item.metadata.get(
        "input_size", {"width": item.image.width, "height": item.image.height}
    )
    return recorded


def derived_images(
    item: StageImage, generated: list[Image.Image], metadata: dict[str, Any]
) -> list[StageImage]:
    """``generated`` from ``item`` as stage images: ``item``'s metadata, then ``metadata`` over it.

    Each image gets its own copy, so a later stage editing one image's metadata leaves the others'.
    """
    return [StageImage(image, {**item.metadata, **copy.deepcopy(metadata)}) for image in generated]

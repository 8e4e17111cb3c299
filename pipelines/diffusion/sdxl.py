"""Stable Diffusion XL on ONNX Runtime: txt2img (``txt2img-sdxl``) on the CPU or the GPU path, and
the UNet loop under img2img (``img2img-sdxl``) and inpainting (``SdxlRun``).

The numerics follow diffusers' PyTorch ``StableDiffusionXLPipeline`` step for step: both text
encoders' penultimate hidden states side by side, the second encoder's projected pooled output
and the size conditioning (``time_ids``: original size, crop origin, target size) as the UNet's
``added_cond_kwargs``, zeros for an absent negative prompt (``force_zeros_for_empty_prompt``),
the same scheduler calls and guidance. The model folder is optimum's SDXL ONNX layout written by
``pipelines.models.convert`` (``text_encoder_2/``, ``tokenizer_2/``, a UNet taking
``text_embeds`` and ``time_ids``).

img2img and inpainting are SD's own tasks (``pipelines.diffusion.img2img`` and ``.inpaint``: the
strength schedule, the starting noise, the mask) given an ``SdxlRun``, whose prompt encoding and
UNet loop are SDXL's; on a GPU worker their UNet loop and decoding run on the CUDA graphs, as SD's do
(``Run.unet_calls``, ``sd.decode_images``).
diffusers' SDXL img2img and inpaint pipelines condition on the same size ``time_ids`` as txt2img
unless ``requires_aesthetics_score`` is set, which only the refiner sets; the refiner (no first
text encoder) is not supported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.diffusion.prompt import PromptText, prompt_windows, weight_embeddings

logger = logging.getLogger(__name__)

#: Pipeline names (contract §8.6) that ask for SDXL: every name ending in ``-sdxl``.
SDXL_SUFFIX = "-sdxl"


def is_sdxl_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an SDXL model: its ``model_index.json`` class is an XL pipeline."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return "XL" in str(index.get("_class_name", ""))


def wants_sdxl(params: Mapping[str, Any], folder: Path) -> bool:
    """Whether a stage runs SDXL: the requested pipeline ends in ``-sdxl`` or the model is SDXL."""
    return str(params["pipeline"]).endswith(SDXL_SUFFIX) or is_sdxl_folder(folder)


@dataclass(frozen=True)
class SdxlConditioning:
    """The UNet's text inputs, rows ``[negative] * batch + [prompt] * batch`` with guidance."""

    #: ``(rows, 77, hidden_1 + hidden_2)``: both encoders' penultimate hidden states.
    hidden: np.ndarray
    #: ``(rows, projection)``: the second encoder's projected pooled output (``text_embeds``).
    pooled: np.ndarray
    #: ``(rows, 6)``: original height and width, crop top and left, target height and width.
    time_ids: np.ndarray


def force_zeros_for_empty_prompt(folder: Path) -> bool:
    """SDXL's ``force_zeros_for_empty_prompt`` from the model index (diffusers' default: True)."""
    index = json.loads((folder / "model_index.json").read_text())
    return bool(index.get("force_zeros_for_empty_prompt", True))


def encode_text(model: sd.DiffusionModel, component: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run text encoder ``component``: its penultimate hidden states and its first output.

    In optimum's layout the hidden states come last, the final layer's last of all, so the
    penultimate is output ``-2``; the first output of ``text_encoder_2`` is the pooled projection.
    """
    session = model.session(component)
    outputs = session.run(None, {"input_ids": ids.astype(sd.input_type(session, "input_ids", np.int32))})
    return outputs[-2], outputs[0]


def encode_weighted(
    model: sd.DiffusionModel, component: str, tokenizer: str, prompt: PromptText
) -> tuple[np.ndarray, np.ndarray]:
    """``encode_text`` on one window of ``prompt``'s tokens, the hidden states weighted as lpw does.

    The window is truncated as diffusers' SDXL pipeline truncates; the first output (the pooled
    projection of ``text_encoder_2``) is not weighted.
    """
    windows = prompt_windows(model.tokenizer_of(tokenizer), prompt, truncate=True)
    hidden, first = encode_text(model, component, windows.ids)
    return weight_embeddings(hidden, windows.weights), first


def encode_prompts(model: sd.DiffusionModel, prompt: PromptText) -> tuple[np.ndarray, np.ndarray]:
    """One prompt through both encoders: ``(1, 77, hidden_1 + hidden_2)`` and ``(1, projection)``."""
    first, _ = encode_weighted(model, "text_encoder", "tokenizer", prompt)
    second, pooled = encode_weighted(model, "text_encoder_2", "tokenizer_2", prompt)
    return np.concatenate([first, second], axis=-1), pooled


def size_time_ids(width: int, height: int) -> np.ndarray:
    """SDXL's size conditioning for an uncropped image generated at its own size: ``(1, 6)``."""
    return np.asarray([[height, width, 0, 0, height, width]], dtype=np.float32)


def encode_prompt(
    model: sd.DiffusionModel,
    prompt: PromptText,
    negative_prompt: PromptText | None,
    generation: sd.Generation,
) -> SdxlConditioning:
    """The UNet's text and size conditioning for ``generation``.

    ``prompt`` and ``negative_prompt`` are free of network tokens: plain text, or weighted spans.
    """
    hidden, pooled = encode_prompts(model, prompt)
    time_ids = size_time_ids(generation.width, generation.height)
    rows = generation.batch
    if generation.guidance:
        if negative_prompt is None and force_zeros_for_empty_prompt(model.folder):
            negative_hidden, negative_pooled = np.zeros_like(hidden), np.zeros_like(pooled)
        else:
            negative_hidden, negative_pooled = encode_prompts(model, negative_prompt or "")
        hidden = np.concatenate([np.repeat(negative_hidden, rows, 0), np.repeat(hidden, rows, 0)])
        pooled = np.concatenate([np.repeat(negative_pooled, rows, 0), np.repeat(pooled, rows, 0)])
        rows *= 2
    else:
        hidden, pooled = np.repeat(hidden, rows, 0), np.repeat(pooled, rows, 0)
    return SdxlConditioning(
        hidden=hidden.astype(np.float32),
        pooled=pooled.astype(np.float32),
        time_ids=np.repeat(time_ids, rows, 0),
    )


def added_inputs(conditioning: SdxlConditioning) -> dict[str, np.ndarray]:
    """The pooled text and size conditioning as the UNet's inputs (diffusers' ``added_cond_kwargs``)."""
    return {"text_embeds": conditioning.pooled, "time_ids": conditioning.time_ids}


def unet_inputs(conditioning: SdxlConditioning) -> dict[str, np.ndarray]:
    """The conditioning as the UNet's inputs besides sample and timestep, by input name."""
    return {"encoder_hidden_states": conditioning.hidden, **added_inputs(conditioning)}


def run_conditioning(run: sd.Run) -> SdxlConditioning:
    """``encode_prompt`` on the run's prompts, their network tokens removed."""
    prompt, negative = sd.parse_prompts(run.generation)
    if prompt.clip_skip:
        logger.warning("<clip:skip:%d> is not applied to SDXL (contract §9); ignored", prompt.clip_skip)
    return encode_prompt(run.model, prompt.spans, negative.spans if negative else None, run.generation)


@dataclass(frozen=True)
class SdxlRun(sd.Run):
    """A ``Run`` whose prompt encoding and UNet loop are SDXL's: SD's img2img and inpaint run on it."""

    @cached_property
    def conditioning(self) -> SdxlConditioning:
        """Both encoders' hidden states, the pooled projection and the size ``time_ids``, once per run."""
        return run_conditioning(self)

    family: ClassVar[str] = "sdxl"

    def prompt_embeddings(self) -> np.ndarray:
        """The UNet's ``encoder_hidden_states``; ``unet_calls`` adds the pooled and size conditioning."""
        return self.conditioning.hidden

    def embeddings_by_call(self) -> list[np.ndarray]:
        """One set for every call: SDXL reads ``(a|b)`` as text, as onnx-web's SDXL pipelines do."""
        return [self.prompt_embeddings()]

    def unet_calls(
        self,
        embeddings: np.ndarray | Sequence[np.ndarray],
        extra_inputs: Mapping[str, np.ndarray],
        unet: Any,
    ) -> sd.UnetCalls:
        """``Run.unet_calls`` on an SDXL UNet: ``embeddings`` with this run's pooled and size conditioning."""
        if extra_inputs:
            raise ValueError(f"an SDXL UNet takes no inputs {sorted(extra_inputs)}")
        return super().unet_calls(embeddings, added_inputs(self.conditioning), unet)


def diffusion_run(
    params: Mapping[str, Any], model: sd.DiffusionModel, generation: sd.Generation, hooks: sd.StepHooks
) -> sd.Run:
    """The ``Run`` an image-to-image stage hands SD's img2img or inpaint: ``SdxlRun`` for SDXL."""
    run_class = SdxlRun if wants_sdxl(params, model.folder) else sd.Run
    return run_class(model, generation, hooks)


def txt2img_sdxl(run: sd.Run) -> list[Image.Image]:
    """Generate ``generation.batch`` SDXL images from onnx-web's seeded noise, reseeded where the
    prompt's ``<reseed>`` tokens say.

    On a CUDA worker the UNet and VAE decoder run on ``pipelines.gpu.runtime``'s CUDA graphs;
    otherwise, and for a run with a LoRA, on the worker's ONNX Runtime sessions.
    """
    sdxl = SdxlRun(run.model, run.generation, run.hooks) if not isinstance(run, SdxlRun) else run
    scheduler = sdxl.scheduler()
    latents = sdxl.starting_latents(scheduler, reseeded=True)
    return sdxl.decode(sdxl.denoise(scheduler, latents, sdxl.prompt_embeddings()))

"""Latent Consistency Models: a UNet distilled to embed the guidance scale, run in a few steps.

An LCM-distilled UNet (diffusers config ``time_cond_proj_dim``; our converter exports it with a
``timestep_cond`` input) does not need classifier-free guidance: the guidance scale ``w = cfg - 1``
is embedded sinusoidally (``guidance_embedding``) and given to every UNet call, the prompt is
encoded alone and each step runs the UNet once. The numerics follow diffusers'
``LatentConsistencyModelPipeline`` when run with the ``lcm`` scheduler; other schedulers step the
same predictions.

An LCM *LoRA* (or a turbo model) changes nothing here: it is an ordinary UNet, run as any other
with a low cfg (``cfg <= 1`` runs no guidance, one UNet row per step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.diffusion import model as sd
from pipelines.diffusion.sdxl import SdxlRun
from pipelines.models.registry import unet_config

#: The ONNX input of an LCM-distilled UNet (``UNet2DConditionModel``'s ``timestep_cond``).
TIMESTEP_COND = "timestep_cond"
#: diffusers scales the guidance weight by this before embedding it.
GUIDANCE_EMBEDDING_SCALE = 1000.0


def lcm_width(folder: Path) -> int | None:
    """The width of the guidance embedding an LCM-distilled UNet takes (``time_cond_proj_dim`` of its
    config, which the converter copies); ``None`` for any other UNet.

    Read from the folder, not the session, so a run that never loads the ONNX UNet session (the
    fused CUDA path, the batched loop's planning) pays nothing for the question. A folder converted
    elsewhere lacks the config; an LCM-distilled UNet in one fails on its missing input when it runs.
    """
    return unet_config(folder, "time_cond_proj_dim")


def guidance_embedding(cfg: float, width: int, rows: int) -> np.ndarray:
    """The ``(rows, width)`` sinusoidal embedding of ``w = cfg - 1``, as diffusers' LCM pipeline makes it.

    Computed in float32 with torch, as diffusers does, so the UNet sees the very same values.
    """
    import torch

    half = width // 2
    weight = torch.full((rows,), cfg - 1.0, dtype=torch.float32) * GUIDANCE_EMBEDDING_SCALE
    rate = torch.log(torch.tensor(10000.0)) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -rate)
    angles = weight[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if width % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    result: np.ndarray = embedding.numpy()
    return result


@dataclass(frozen=True)
class LcmRun(sd.Run):
    """A ``Run`` on an LCM-distilled UNet: ``generation.cfg`` is 1 (no guidance rows, no negative
    prompt encoded) and ``guidance_scale``, the cfg asked for, is embedded into every UNet call."""

    guidance_scale: float = 1.0
    width: int = 0

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
        """``Run.denoise`` with the embedded guidance scale as the UNet's ``timestep_cond``."""
        embedded = guidance_embedding(self.guidance_scale, self.width, len(latents))
        return super().denoise(
            scheduler,
            latents,
            embeddings,
            timesteps=timesteps,
            steps=steps,
            conditioning=conditioning,
            after_step=after_step,
            extra_inputs={**(extra_inputs or {}), TIMESTEP_COND: embedded},
            unet=unet,
        )


#: The tasks whose UNet loop ``LcmRun`` drives: SD 1.x/2.x txt2img and img2img (``Run.denoise``).
LCM_TASKS = ("txt2img", "img2img")


def lcm_run(run: sd.Run, task: str) -> sd.Run:
    """``run`` itself, or for an LCM-distilled UNet the ``LcmRun`` that feeds it ``timestep_cond``.

    ``task`` is what the stage runs: ``txt2img``, ``img2img``, ``panorama`` or ``pix2pix``. Raises
    ``ValueError`` for such a UNet in a loop that does not feed it (panorama, pix2pix, SDXL's),
    rather than failing inside ONNX Runtime on the missing input.
    """
    width = lcm_width(run.model.folder)
    if width is None:
        return run
    if task not in LCM_TASKS or isinstance(run, SdxlRun):
        family = "SDXL " if isinstance(run, SdxlRun) else ""
        raise ValueError(
            f"{run.generation.model} is an LCM-distilled model, which runs {' and '.join(LCM_TASKS)} "
            f"on Stable Diffusion 1.x/2.x only, not {family}{task}"
        )
    generation = run.generation
    return LcmRun(run.model, replace(generation, cfg=1.0), run.hooks, generation.cfg, width)

"""Stable Diffusion 1.x text-to-image on ONNX Runtime."""

from __future__ import annotations

from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.gpu.runtime import gpu_settings


def txt2img(run: sd.Run) -> list[Image.Image]:
    """Generate ``generation.batch`` images of ``width`` x ``height`` from onnx-web's seeded noise."""
    # A LoRA is blended into the UNet of the worker's ONNX Runtime sessions; the fused CUDA path
    # builds its own UNet from the folder, so such a run stays on the sessions (CUDA EP on GPUs).
    # An LCM-distilled UNet (``LcmRun``) takes the CUDA path, which embeds its guidance scale.
    fused = run.model.networks.variant("unet") is None
    if gpu_settings(run.model.sessions) is not None and fused:
        from pipelines.gpu.batch import run_txt2img

        return run_txt2img(run)
    embeddings = run.prompt_embeddings()
    scheduler = run.scheduler()
    return run.decode(run.denoise(scheduler, run.starting_latents(scheduler), embeddings))

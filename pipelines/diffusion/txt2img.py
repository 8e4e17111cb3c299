"""Stable Diffusion 1.x text-to-image on ONNX Runtime."""

from __future__ import annotations

from PIL import Image

from pipelines.diffusion import model as sd
from pipelines.gpu import runtime


def txt2img(run: sd.Run) -> list[Image.Image]:
    """Generate ``generation.batch`` images of ``width`` x ``height`` from onnx-web's seeded noise,
    reseeded where the prompt's ``<reseed>`` tokens say."""
    # On a GPU worker the run takes the batched loop on the CUDA graphs, unless ``graph_model`` keeps
    # it on the sessions (a LoRA). An LCM-distilled UNet (``LcmRun``) takes it too: the loop embeds
    # its guidance scale.
    if runtime.graph_model(run.model) is not None:
        from pipelines.gpu.batch import run_txt2img

        return run_txt2img(run)
    embeddings = run.embeddings_by_call()
    scheduler = run.scheduler()
    return run.decode(run.denoise(scheduler, run.starting_latents(scheduler, reseeded=True), embeddings))

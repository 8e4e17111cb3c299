"""Live-preview decoders: TAESD (diffusers' ``AutoencoderTiny``) exported to ONNX, decoder only.

While a diffusion job runs, the worker shows an approximation of its current latents
(``pipelines.diffusion.preview``). TAESD's decoder makes one from the latents in a few
milliseconds, where the model's own VAE would take as long as a step. A preview model lives at::

    <models>/preview/<name>/model.onnx      latent_sample (batch, 4, h, w) -> sample (batch, 3, 8h, 8w)

``taesd`` reads SD 1.x/2.x latents (madebyollin/taesd), ``taesdxl`` SDXL's (madebyollin/taesdxl).

The graph's input is exactly what the denoise loops hold, the scheduler's sample: latents already
multiplied by the model VAE's scaling factor. TAESD was trained on those (its config's
``scaling_factor`` is 1.0); the graph still divides by the config's factor, as diffusers' SD and
SDXL pipelines do before ``vae.decode``, so it takes what those pipelines' latents are. Its
output is ``AutoencoderTiny.decode(...).sample``: an image in [-1, 1] (a trained decoder's range;
nothing clamps it inside the graph). Batch, height and width are dynamic.

The demo models get random-weight decoders with TAESD's real architecture (diffusers' default
``AutoencoderTiny`` config), built by ``build_demo_previews``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.models.convert import DEFAULT_OPSET, TRACE_LATENT_SIDE, export_vae_part
from pipelines.models.layout import ONNX_FILE

#: Folder, under the models path, that holds the preview decoders.
PREVIEW_FOLDER = "preview"
#: The preview decoder of SD 1.x/2.x latents, and of SDXL's.
TAESD = "taesd"
TAESDXL = "taesdxl"
#: Seeds of the demo decoders' random weights: different, so a test can tell the two apart.
DEMO_PREVIEW_SEEDS = {TAESD: 31, TAESDXL: 32}


def preview_model_path(models_path: Path, name: str) -> Path:
    """Where preview decoder ``name`` (``taesd``, ``taesdxl``) lives under the models folder."""
    return models_path / PREVIEW_FOLDER / name / ONNX_FILE


def export_preview_decoder(tiny: Any, dest_folder: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the decoder of ``tiny`` (an ``AutoencoderTiny``) to ``dest_folder/model.onnx``; the folder.

    The export is written into a hidden ``.partial`` folder beside ``dest_folder`` and renamed to
    it (replacing it), so a worker never loads half a decoder.
    """
    import torch

    scaling_factor = float(tiny.config.scaling_factor)
    partial = dest_folder.with_name(f".{dest_folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    export_vae_part(
        tiny.eval(),
        lambda model, latents: model.decode(latents / scaling_factor, return_dict=False)[0],
        torch.randn((1, tiny.config.latent_channels, TRACE_LATENT_SIDE, TRACE_LATENT_SIDE)),
        partial / ONNX_FILE,
        opset,
        names=("latent_sample", "sample"),
    )
    shutil.rmtree(dest_folder, ignore_errors=True)
    partial.rename(dest_folder)
    return dest_folder


def convert_preview_folder(src: Path, dest: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export the diffusers ``AutoencoderTiny`` folder ``src`` (config.json and weights) to ``dest``."""
    from diffusers import AutoencoderTiny

    return export_preview_decoder(AutoencoderTiny.from_pretrained(src), dest, opset)


def random_preview_decoder(seed: int) -> Any:
    """An ``AutoencoderTiny`` with diffusers' default config (TAESD's) and weights seeded by ``seed``."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny()


def build_demo_previews(models_path: Path, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Export random-weight ``taesd`` and ``taesdxl`` decoders unless they exist; their folders."""
    folders = []
    for name, seed in DEMO_PREVIEW_SEEDS.items():
        dest = preview_model_path(models_path, name).parent
        if not (dest / ONNX_FILE).is_file():
            if progress is not None:
                progress(f"{PREVIEW_FOLDER}/{name}: building a random-weight preview decoder")
            export_preview_decoder(random_preview_decoder(seed), dest)
        folders.append(dest)
    return folders

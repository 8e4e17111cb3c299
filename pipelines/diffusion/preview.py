"""Live previews: an approximate image of a running diffusion loop's latents.

Every denoise loop reports its latents after each scheduler step (``StepHooks.on_latents``, a
lazy getter); the worker throttles those calls by time and hands the latents it takes to
``decode_preview``, which runs the family's TAESD decoder (``pipelines.models.preview``) on the
first image of the batch and returns a small RGB image. A models folder without the decoder gets
no previews (``None``), never an error: previews are a convenience, not part of the job.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TypeGuard

import numpy as np
from PIL import Image

from pipelines.context import SessionProvider
from pipelines.models.preview import TAESD, TAESDXL, preview_model_path
from pipelines.models.registry import ModelFamily

#: The preview decoder (``<models>/preview/<name>``) of each model family's latents.
PREVIEW_MODELS: dict[ModelFamily, str] = {"sd": TAESD, "sdxl": TAESDXL}
#: The longer side of a preview image, in pixels, unless the caller asks otherwise.
DEFAULT_PREVIEW_SIDE = 256
#: JPEG quality of a stored preview.
JPEG_QUALITY = 75


def decode_preview(
    models_path: Path,
    sessions: SessionProvider,
    family: str,
    latents: np.ndarray,
    max_side: int = DEFAULT_PREVIEW_SIDE,
) -> Image.Image | None:
    """The first image of ``latents`` (``(batch, 4, h, w)``, as a loop holds them) as an RGB preview.

    Its longer side is at most ``max_side`` (shrunk with Lanczos, never enlarged); ``None`` when
    the family's preview decoder is not installed. Raises ``ValueError`` for an unknown family.
    """
    if not is_family(family):
        raise ValueError(f"no preview decoder for model family {family!r}; known: {sorted(PREVIEW_MODELS)}")
    path = preview_model_path(models_path, PREVIEW_MODELS[family])
    if not path.is_file():
        return None
    sample = np.ascontiguousarray(latents[:1], dtype=np.float32)
    pixels = sessions.get(path).run(None, {"latent_sample": sample})[0][0]
    rgb = ((np.clip(pixels, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    return shrink(Image.fromarray(rgb.transpose(1, 2, 0)), max_side)


def render_preview(
    models_path: Path, sessions: SessionProvider, family: str, latents: np.ndarray, max_side: int
) -> bytes | None:
    """The JPEG a worker stores as a preview of ``latents`` (``decode_preview``, then encoding);
    ``None`` when the family's preview decoder is not installed. ``bench.gpu`` times this on a GPU."""
    image = decode_preview(models_path, sessions, family, latents, max_side=max_side)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def is_family(family: str) -> TypeGuard[ModelFamily]:
    """Whether ``family`` is one of the model families a loop reports (``sd``, ``sdxl``)."""
    return family in PREVIEW_MODELS


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` resized with Lanczos so its longer side is at most ``max_side``, aspect kept."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)

"""Upscaling: plain resampling and the super-resolution ONNX models (contract §3.3, §8.5).

``upscale-simple`` and highres use :func:`resize_simple`; the model stages (Real-ESRGAN, SwinIR,
BSRGAN) run :func:`upscale_with_model`, which feeds the model tile by tile through
:mod:`pipelines.tiling` and finishes any ``outscale`` beyond the model's native factor with Lanczos.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from pipelines.stages.base import StageImage

#: Resampling filters ``upscale-simple`` and highres accept, by their API names.
SIMPLE_METHODS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` multiplied by ``scale``, rounded to whole pixels and never below one pixel."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_simple(image: Image.Image, method: str, scale: float) -> Image.Image:
    """Resize ``image`` by ``scale`` with a PIL filter; a scale of 1 or less returns it unchanged.

    onnx-web's simple upscaler only ever enlarges (highres with scale 1 is a no-op), so factors
    at or below one do not shrink the image either.
    """
    if method not in SIMPLE_METHODS:
        raise ValueError(f"unknown upscaling method {method!r}: expected one of {', '.join(SIMPLE_METHODS)}")
    if scale <= 1:
        return image
    return image.resize(scaled_size(image.size, scale), SIMPLE_METHODS[method])


def with_image(item: StageImage, image: Image.Image, **metadata: Any) -> StageImage:
    """A copy of ``item`` holding ``image``, its metadata ``size`` updated and ``metadata`` merged in."""
    size = {"width": image.width, "height": image.height}
    return StageImage(image, {**item.metadata, **metadata, "size": size})

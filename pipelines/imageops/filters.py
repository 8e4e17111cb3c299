"""Source filters: the preprocessing img2img applies to its source (contract §3.4, §5.2).

onnx-web's list includes ControlNet preprocessors (depth, face mesh, HED, MLSD, normal maps,
OpenPose, segmentation, scribble) whose models are downloaded from a hub at run time; this
build cannot fetch them, so it runs the four filters that need no model and names the filter
in the error for the rest. OpenCV is imported only by the filter that uses it, so the api can
read the lists without it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from pipelines.imageops.noise import noise_histogram

#: Every source filter onnx-web names, in the order ``GET /api/settings/filters`` lists them.
SOURCE_FILTERS = (
    "canny",
    "depth",
    "face",
    "gaussian",
    "hed",
    "mlsd",
    "noise",
    "none",
    "normal",
    "openpose",
    "segment",
    "scribble",
)
#: The source filters this build runs.
FILTERS_AVAILABLE = ("canny", "gaussian", "noise", "none")

#: Canny hysteresis thresholds, as onnx-web's ControlNet preprocessing uses them.
CANNY_LOW = 100
CANNY_HIGH = 200
GAUSSIAN_RADIUS = 5
#: Share of histogram noise the ``noise`` filter mixes into the source.
NOISE_AMOUNT = 0.5


class FilterUnavailable(ValueError):
    """A source filter that needs a model this build cannot download."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"source filter {name!r} needs a downloaded model and is not available; "
            f"use one of {', '.join(FILTERS_AVAILABLE)}"
        )
        self.name = name


def filter_canny(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """White Canny edges on black, in RGB like every other filter's output."""
    import cv2  # the worker's dependency only, see the module docstring

    edges = cv2.Canny(np.asarray(image.convert("RGB")), CANNY_LOW, CANNY_HIGH)
    return Image.fromarray(edges).convert("RGB")


def filter_gaussian(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A Gaussian blur."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(GAUSSIAN_RADIUS))


def filter_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The source mixed half and half with noise drawn from its own colour histogram."""
    source = image.convert("RGB")
    noise = noise_histogram(source, source.size, (0, 0), "white", rng)
    return Image.blend(source, noise, NOISE_AMOUNT)


def filter_none(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The source unchanged."""
    return image


_FILTERS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "canny": filter_canny,
    "gaussian": filter_gaussian,
    "noise": filter_noise,
    "none": filter_none,
}


def apply_source_filter(name: str, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Run the named source filter on ``image``."""
    if name in _FILTERS:
        return _FILTERS[name](image, rng)
    if name in SOURCE_FILTERS:
        raise FilterUnavailable(name)
    raise ValueError(f"unknown source filter {name!r}: expected one of {', '.join(SOURCE_FILTERS)}")

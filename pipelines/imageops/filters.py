"""Source filters: the preprocessing img2img applies to its source (contract §3.4, §5.2).

Four filters need no model. The ControlNet preprocessors (depth, normal, HED, scribble, MLSD,
OpenPose, segmentation) run annotator models from the models folder (``filter/<model>/``, see
:mod:`pipelines.imageops.annotators`); each is offered only where its model is installed
(``runnable_filters``). ``face`` (a face mesh) is not built. OpenCV is imported only by the filters
that use it, so the api can read the lists without it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
from PIL import Image, ImageFilter

from pipelines.imageops.annotators import ANNOTATOR_MODELS, Annotators
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
#: The source filters that need no model.
FILTERS_AVAILABLE = ("canny", "gaussian", "noise", "none")
#: Every source filter this build can run, given its annotator model.
FILTERS_BUILT = tuple(
    name for name in SOURCE_FILTERS if name in FILTERS_AVAILABLE or name in ANNOTATOR_MODELS
)

#: Canny hysteresis thresholds, as onnx-web's ControlNet preprocessing uses them.
CANNY_LOW = 100
CANNY_HIGH = 200
GAUSSIAN_RADIUS = 5
#: Share of histogram noise the ``noise`` filter mixes into the source.
NOISE_AMOUNT = 0.5


class FilterUnavailable(ValueError):
    """A source filter this build does not run, or whose annotator model is not installed."""

    def __init__(self, name: str) -> None:
        reason = "needs its annotator model" if name in ANNOTATOR_MODELS else "is not built"
        super().__init__(
            f"source filter {name!r} {reason} and is not available; use one of {', '.join(FILTERS_AVAILABLE)}"
        )
        self.name = name


def runnable_filters(installed_models: Collection[str]) -> tuple[str, ...]:
    """The source filters that run with these annotator models installed, in ``SOURCE_FILTERS`` order."""
    return tuple(
        name
        for name in SOURCE_FILTERS
        if name in FILTERS_AVAILABLE or ANNOTATOR_MODELS.get(name) in installed_models
    )


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


def apply_source_filter(
    name: str, image: Image.Image, rng: np.random.Generator, annotators: Annotators | None = None
) -> Image.Image:
    """Run the named source filter on ``image``; the model-based ones need ``annotators``.

    Raises:
        FilterUnavailable: a filter not built, or model-based without ``annotators``.
        AnnotatorMissing: a model-based filter whose model is not installed.
    """
    if name in _FILTERS:
        return _FILTERS[name](image, rng)
    if name in ANNOTATOR_MODELS and annotators is not None:
        return annotators.run(name, image)
    if name in SOURCE_FILTERS:
        raise FilterUnavailable(name)
    raise ValueError(f"unknown source filter {name!r}: expected one of {', '.join(SOURCE_FILTERS)}")

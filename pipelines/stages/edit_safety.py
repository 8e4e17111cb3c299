"""``edit-safety``: check every image with a safety classifier; flagged images are hidden.

Params: ``safety_model``, the classifier (``pipelines.safety``; resolved by the api to its path
below the models folder); ``threshold`` (default 0.5): an image whose most likely unsafe label has
at least this probability is flagged; ``action``: ``black`` replaces a flagged image with a black
one of its size (onnx-web's horde-safety stage with ``horde-safety-nsfw``), ``blur`` blurs it
beyond recognition, ``mark`` only records the verdict (horde-safety without that flag).

Every image's metadata gets a ``safety`` object: the model, the unsafe label and its score, the
threshold, whether it was ``flagged`` and what was done. A label named ``csam`` over the threshold
fails the job with reason ``csam`` (contract §6.3) instead: such an image is never stored.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image, ImageFilter

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType, choice, number, text

log = logging.getLogger(__name__)

ACTIONS = ("black", "blur", "mark")
#: The blur radius, as a fraction of the image's longer side: nothing recognisable is left.
BLUR_FRACTION = 1 / 16


class SafetyBlocked(ValueError):
    """The classifier found an image that must not be stored; the job fails with ``code``."""

    code = "csam"


def hidden(image: Image.Image, action: str) -> Image.Image:
    """``image`` made unviewable as ``action`` says (``mark`` leaves it as it is)."""
    if action == "mark":
        return image
    if action == "black":
        return Image.new("RGB", image.size, "black")
    radius = max(image.size) * BLUR_FRACTION
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Classify the images in one batch; hide the flagged ones and record the verdict on each."""
    from pipelines.models.layout import ONNX_FILE
    from pipelines.safety import SafetySpec, classify

    if not images:
        ctx.on_step(1)
        return images
    path = str(params["safety_model"])
    folder = ctx.models_path / path
    spec = SafetySpec.read(folder)
    ctx.check_cancelled()
    scores = classify(ctx.sessions.get(folder / ONNX_FILE), [item.image for item in images], spec)
    threshold, action = float(params["threshold"]), str(params["action"])
    checked = []
    for index, (item, row) in enumerate(zip(images, scores, strict=True)):
        unsafe = 1 + int(row[1:].argmax())
        label, score = spec.labels[unsafe], float(row[unsafe])
        flagged = score >= threshold
        if flagged and label == "csam":
            raise SafetyBlocked(f"image {index} was flagged {label} by {path}")
        if flagged:
            log.warning("safety check flagged an image", extra={"image": index, "label": label})
        verdict = {
            "model": path,
            "label": label,
            "score": score,
            "threshold": threshold,
            "flagged": flagged,
            "action": action if flagged else "none",
        }
        image = hidden(item.image, action) if flagged else item.image
        checked.append(StageImage(image, {**item.metadata, "safety": verdict}))
    ctx.on_step(1)
    return checked


STAGE = StageType(
    "edit-safety",
    run,
    (
        text("safety_model", 1000, required=True),
        number("threshold", 0, 1, 0.5),
        choice("action", ACTIONS, "black"),
    ),
)

"""Face correction: find faces, restore each with an ONNX face model, paste them back feathered.

``correct-gfpgan`` and ``correct-codeformer`` share this module; they differ only in the model
they load (contract §3.3, §10.5). Face models (exported by :mod:`pipelines.models.upscalers`) take
``input`` (1, 3, S, S) RGB in [-1, 1] at a fixed size S plus ``weight`` (1,) and return the
restored face in [-1, 1].

Detection uses OpenCV's bundled frontal-face Haar cascade, so nothing is downloaded (onnx-web
fetched RetinaFace weights at first use). A Haar box carries no landmarks, so each face is cut
as an upright square placed where the box puts the eyes of GFPGAN's FFHQ alignment template;
roll is not corrected, which the frontal cascade would not detect much of anyway.

``faceStrength`` is CodeFormer's fidelity (the model's ``weight`` input: 0 restores most, 1 keeps
most of the original), and its face is pasted back whole, as onnx-web does. GFPGAN ignores that
input, so for it ``faceStrength`` is how much of the restored face replaces the original (its
visibility): 0 leaves the image as it was, 1 takes the model's face wherever the feathered mask is
full (onnx-web pastes GFPGAN's face whole whatever the strength). ``faceOutscale`` scales the whole
image with Lanczos; faces are pasted at that scale, so they keep the model's resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.model import stage_sources
from pipelines.imageops.upscale import model_path, scaled_size, with_image, with_model

log = logging.getLogger(__name__)

#: OpenCV's frontal-face cascade, shipped inside the opencv-python wheel.
FACE_CASCADE = "haarcascade_frontalface_default.xml"
#: Detector settings: 10% scale steps, 5 overlapping hits per face (fewer false faces), and
#: faces smaller than this many pixels are left alone (too small to restore usefully).
DETECT_SCALE_STEP = 1.1
DETECT_NEIGHBOURS = 5
MIN_FACE = 32
#: Where a Haar box puts the eyes: their line at this fraction of the box height, this fraction
#: of the box width apart, centred (measured on frontal faces; the cascade's boxes are tight).
BOX_EYE_LINE = 0.40
BOX_EYE_SPAN = 0.40
#: GFPGAN's FFHQ template (512 px), as fractions of the crop: the eyes' midpoint and distance.
TEMPLATE_EYE_CENTRE = (0.4999, 0.4689)
TEMPLATE_EYE_SPAN = 0.2459
#: Width of the paste-back mask's ramp, as a fraction of the face crop's side.
FEATHER = 0.125
#: Input side of face models whose export leaves it dynamic: what GFPGAN and CodeFormer train at.
DEFAULT_FACE_SIZE = 512

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CorrectionSettings:
    """A correction stage's parameters, read and checked."""

    #: The model's path below the models folder (without ``.onnx``), or ``None`` for none.
    model: str | None
    strength: float
    outscale: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any], default_model: str | None) -> CorrectionSettings:
        """Read ``correction_model``, ``face_strength`` and ``face_outscale`` (the upscale group).

        The stage's own ``outscale`` is the upscaler's and is not read here.
        """
        model = params["correction_model"] or default_model
        strength, outscale = float(params["face_strength"]), int(params["face_outscale"])
        return cls(_model_name(model) if model else None, strength, outscale)


def _model_name(name: object) -> str:
    """A model path below the models folder; anything that could leave the folder is refused."""
    text = str(name)
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or "\\" in text:
        raise ValueError(f"correction model {text!r} must be a model name from the models folder")
    return text


@cache
def _face_detector() -> cv2.CascadeClassifier:
    # cv2's type stubs leave out the ``data`` module the wheel ships its cascades in.
    folder = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
    detector = cv2.CascadeClassifier(str(folder / FACE_CASCADE))
    if detector.empty():
        raise FileNotFoundError(f"OpenCV's {FACE_CASCADE} is missing from this opencv-python build")
    return detector


def detect_faces(image: Image.Image) -> list[Box]:
    """Boxes ``(x, y, width, height)`` of the frontal faces in ``image``, largest first."""
    gray = cv2.equalizeHist(cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY))
    found = _face_detector().detectMultiScale(
        gray, scaleFactor=DETECT_SCALE_STEP, minNeighbors=DETECT_NEIGHBOURS, minSize=(MIN_FACE, MIN_FACE)
    )
    boxes = [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda box: box[2] * box[3], reverse=True)


def face_transform(box: Box, size: int) -> np.ndarray:
    """The 2x3 affine map from image pixels to a ``size`` square crop aligned like FFHQ faces."""
    x, y, width, height = box
    side = BOX_EYE_SPAN * width / TEMPLATE_EYE_SPAN
    scale = size / side
    eyes_x, eyes_y = x + width / 2, y + BOX_EYE_LINE * height
    left = eyes_x - TEMPLATE_EYE_CENTRE[0] * side
    top = eyes_y - TEMPLATE_EYE_CENTRE[1] * side
    return np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]], dtype=np.float64)


def feather_mask(size: int) -> np.ndarray:
    """A ``size`` square of weights: 1 inside, ramping linearly to 0 over the outer ``FEATHER``."""
    ramp = max(1, round(size * FEATHER))
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    edge = np.clip((distance + 0.5) / ramp, 0, 1)
    return np.outer(edge, edge)


def face_input_size(session: Any) -> int:
    """The square side a face model takes: its fixed input size, else 512."""
    height, width = session.get_inputs()[0].shape[2:4]
    if isinstance(height, int) and isinstance(width, int):
        if height != width:
            raise ValueError(f"face models take square faces; this one takes {width}x{height}")
        return height
    return DEFAULT_FACE_SIZE


def restore_face(session: Any, crop: np.ndarray, strength: float) -> np.ndarray:
    """Run the face model on one aligned crop (H, W, 3 levels 0-255) and return it restored, 0-255."""
    batch = (crop.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    feeds = {}
    for model_input in session.get_inputs():
        if model_input.name == "weight":
            feeds["weight"] = np.array([strength], dtype=np.float32)
        else:
            feeds[model_input.name] = np.ascontiguousarray(batch)
    output = session.run(None, feeds)[0][0]
    return (np.clip(output.transpose(1, 2, 0), -1.0, 1.0) + 1.0) * 127.5


def paste_face(
    canvas: np.ndarray, face: np.ndarray, to_face: np.ndarray, outscale: int, strength: float
) -> None:
    """Blend ``face`` (a crop made by ``to_face``) into ``canvas`` (the image x ``outscale``), in place.

    Only the rectangle the face lands on is warped, so a large image costs no full-size copies.
    """
    size = face.shape[0]
    to_image = cv2.invertAffineTransform(to_face) * outscale
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    landed = corners @ to_image.T
    height, width = canvas.shape[:2]
    x0, y0 = np.maximum(np.floor(landed.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(landed.max(axis=0)).astype(int), (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    to_region = to_image.copy()
    to_region[:, 2] -= (x0, y0)
    region = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpAffine(face.astype(np.float32), to_region, region, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(feather_mask(size), to_region, region, flags=cv2.INTER_LINEAR)
    weight = (np.clip(mask, 0.0, 1.0) * strength)[..., None]
    target = canvas[y0:y1, x0:x1]
    target += weight * (warped - target)


def enlarged(image: Image.Image, outscale: int) -> Image.Image:
    """``image`` enlarged ``outscale`` times with Lanczos (itself at 1)."""
    if outscale == 1:
        return image
    return image.resize(scaled_size(image.size, outscale), Image.Resampling.LANCZOS)


def correct_faces(
    image: Image.Image,
    session: Any,
    *,
    strength: float,
    outscale: int,
    visibility: float = 1.0,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Image.Image:
    """Restore every detected face of ``image`` and return it enlarged ``outscale`` times.

    The background is enlarged with Lanczos; each face is cut from the original, restored at
    the model's size (``strength`` its ``weight`` input) and pasted onto the enlarged image, where
    the feathered mask times ``visibility`` says. With no face, or a ``visibility`` of 0, the
    result is the Lanczos-enlarged input exactly.
    """
    source = image.convert("RGB")
    base = enlarged(source, outscale)
    boxes = detect_faces(source)
    if not boxes:
        return base
    size = face_input_size(session)
    pixels = np.asarray(source, dtype=np.float32)
    canvas = np.asarray(base, dtype=np.float32).copy()
    for box in boxes:
        check_cancelled()
        to_face = face_transform(box, size)
        crop = cv2.warpAffine(
            pixels, to_face, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        paste_face(canvas, restore_face(session, crop, strength), to_face, outscale, visibility)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def run_correction_stage(
    ctx: StageContext,
    params: dict[str, Any],
    images: list[StageImage],
    default_model: str | None,
    *,
    strength_is_visibility: bool,
) -> list[StageImage]:
    """What ``correct-gfpgan`` and ``correct-codeformer`` share: correct every input image.

    Works on the stage's input images, else its ``source:<stage>`` upload. With no model (only
    possible for GFPGAN, which has no default), faces are left alone but images are still
    scaled, so later stages see the size the chain asked for. ``strength_is_visibility``: the
    model ignores its ``weight`` input (GFPGAN), so ``face_strength`` blends its faces in instead.
    """
    settings = CorrectionSettings.from_params(params, default_model)
    session = ctx.sessions.get(model_path(ctx.models_path, settings.model)) if settings.model else None
    if session is None:
        log.warning("no correction model given: faces are not corrected")
    corrected = []
    for item in stage_sources(ctx, params, images):
        ctx.check_cancelled()
        if session is None:
            image = enlarged(item.image.convert("RGB"), settings.outscale)
        else:
            image = correct_faces(
                item.image,
                session,
                strength=settings.strength,
                outscale=settings.outscale,
                visibility=settings.strength if strength_is_visibility else 1.0,
                check_cancelled=ctx.check_cancelled,
            )
        corrected.append(with_image(item, image))
    if settings.model:
        path = model_path(ctx.models_path, settings.model)
        corrected = [with_model(item, settings.model, path) for item in corrected]
    ctx.on_step(1)
    return corrected

"""The model-based source filters: ControlNet's annotators, run by ONNX Runtime, post-processed in numpy.

Each filter runs one annotator model, ``<models>/filter/<model>/model.onnx`` (built or converted by
:mod:`pipelines.models.annotators`; the graph takes RGB in [0, 1] and normalises it itself):

- ``depth``: DPT (MiDaS) at the graph's fixed size; depth min-max scaled to 8-bit grey.
- ``normal``: the same depth, Sobel gradients as x and y, a constant z (2π), pixels below 10 % of
  the depth range flattened to face the viewer, normalised and mapped to RGB as ControlNet's MiDaS
  "normal" annotator did.
- ``hed``: the HED edge probability at the input size, as grey.
- ``scribble``: HED's edges thinned by directional non-maximum suppression, blurred and cut to
  binary strokes (ControlNet's "fake scribble").
- ``mlsd``: M-LSD at 512², its TP map decoded to line segments (``decode_lines``), drawn white.
- ``openpose``: the body model at a 368-pixel height, peaks and limbs decoded and drawn
  (:mod:`pipelines.imageops.pose`).
- ``segment``: UperNet at the graph's fixed size, the argmax class painted with the ADE20K palette.

Every filter returns an RGB image of the input's size. This module never imports onnxruntime (the
sessions come from the worker's cache) nor OpenCV at import time, so the api may read its lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import SessionProvider
from pipelines.imageops.ade20k import ADE20K_PALETTE
from pipelines.models.layout import ONNX_FILE

#: The models folder's sub-folder holding the annotator models.
FILTER_FOLDER = "filter"
#: The model each model-based filter runs.
ANNOTATOR_MODELS: dict[str, str] = {
    "depth": "depth",
    "hed": "hed",
    "mlsd": "mlsd",
    "normal": "depth",
    "openpose": "openpose",
    "segment": "segment",
    "scribble": "hed",
}
#: ``normal``: z of every normal before normalising (against Sobel gradients of raw depth), and the
#: share of the depth range below which a pixel is background.
NORMAL_Z = 2 * np.pi
NORMAL_BACKGROUND = 0.1
#: ``scribble``: non-maximum suppression's blur and edge threshold, the stroke blur, the stroke cut.
SCRIBBLE_NMS_SIGMA = 3.0
SCRIBBLE_NMS_THRESHOLD = 127
SCRIBBLE_BLUR_SIGMA = 3.0
SCRIBBLE_CUT = 4
#: ``mlsd``: the detection size, the centre-score and length thresholds (map pixels), how many
#: centres are considered, the suppression window.
MLSD_SIZE = 512
MLSD_SCORE = 0.1
MLSD_DISTANCE = 0.1
MLSD_TOP_K = 200
MLSD_WINDOW = 3
#: ``openpose``: the height the image is scaled to, and the network's stride (the pad multiple).
POSE_HEIGHT = 368
POSE_STRIDE = 8


def model_folder(models_path: Path, model: str) -> Path:
    """The folder of one annotator model."""
    return Path(models_path) / FILTER_FOLDER / model


def installed_models(models_path: Path) -> tuple[str, ...]:
    """The annotator models present in the models folder (a ``model.onnx`` in their folder)."""
    folder = Path(models_path) / FILTER_FOLDER
    if not folder.is_dir():
        return ()
    return tuple(sorted(entry.name for entry in folder.iterdir() if (entry / ONNX_FILE).is_file()))


class AnnotatorMissing(ValueError):
    """A model-based filter whose model is not in the models folder."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(f"source filter {name!r} needs the annotator model {path}, which is not installed")
        self.name = name


@dataclass(frozen=True)
class Annotators:
    """Runs the model-based filters with the worker's models folder and session cache."""

    models_path: Path
    sessions: SessionProvider

    def session(self, name: str) -> Any:
        """The ONNX Runtime session of the model filter ``name`` runs.

        Raises:
            AnnotatorMissing: the model is not installed.
        """
        path = model_folder(self.models_path, ANNOTATOR_MODELS[name]) / ONNX_FILE
        if not path.is_file():
            raise AnnotatorMissing(name, path)
        return self.sessions.get(path)

    def run(self, name: str, image: Image.Image) -> Image.Image:
        """Run the model-based filter ``name`` on ``image``; an RGB image of the same size."""
        return _RUNNERS[name](self.session(name), image.convert("RGB"))


def image_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """(1, 3, H, W) float32 RGB in [0, 1], resized (bicubic) to ``size`` (width, height) if given."""
    if size is not None and size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def fixed_size(session: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a graph traced at a fixed size, else ``fallback``."""
    height, width = session.get_inputs()[0].shape[2:]
    return (width, height) if isinstance(width, int) and isinstance(height, int) else fallback


def grey(values: np.ndarray) -> Image.Image:
    """A uint8 (H, W) map as an RGB image."""
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def predict_depth(session: Any, image: Image.Image) -> np.ndarray:
    """DPT's relative inverse depth at the network's size (float32, larger is nearer).

    Depth and normals are made at that size and the images resized, so the Sobel slopes against
    the constant z are the annotator's whatever the input size.
    """
    (depth,) = session.run(None, {"image": image_tensor(image, fixed_size(session, image.size))})
    return depth[0]


def resized(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A uint8 (H, W) or (H, W, 3) map as an RGB image of ``size`` (bilinear)."""
    image = Image.fromarray(pixels).convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """Depth min-max scaled to 0-255 (uint8); a flat depth is black."""
    scaled = _unit_range(depth)
    return (scaled * 255.0).clip(0, 255).astype(np.uint8)


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float32)


def sobel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives along x and y, the borders mirrored (OpenCV's default border)."""
    padded = np.pad(values.astype(np.float32), 1, mode="reflect")
    left, right = padded[:, :-2], padded[:, 2:]
    up, down = padded[:-2, :], padded[2:, :]
    dx = (right[:-2] + 2 * right[1:-1] + right[2:]) - (left[:-2] + 2 * left[1:-1] + left[2:])
    dy = (down[:, :-2] + 2 * down[:, 1:-1] + down[:, 2:]) - (up[:, :-2] + 2 * up[:, 1:-1] + up[:, 2:])
    return dx, dy


def normal_image(depth: np.ndarray) -> np.ndarray:
    """A normal map (H, W, 3) uint8 from depth: R the x slope, G the y slope, B facing the viewer."""
    dx, dy = sobel(depth)
    background = _unit_range(depth) < NORMAL_BACKGROUND
    dx[background] = 0
    dy[background] = 0
    normal = np.stack([dx, dy, np.full_like(dx, NORMAL_Z)], axis=2)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


def predict_edges(session: Any, image: Image.Image) -> np.ndarray:
    """HED's edge probability at the input's size, as uint8."""
    (edges,) = session.run(None, {"image": image_tensor(image)})
    return (edges[0, 0] * 255.0).clip(0, 255).astype(np.uint8)


def scribble(edges: np.ndarray) -> np.ndarray:
    """Binary strokes (0 or 255) from an edge map: thin, threshold, blur, cut."""
    import cv2  # the worker's dependency only, see the module docstring

    thin = edge_nms(edges, SCRIBBLE_NMS_THRESHOLD, SCRIBBLE_NMS_SIGMA)
    blurred = cv2.GaussianBlur(thin, (0, 0), SCRIBBLE_BLUR_SIGMA)
    return np.where(blurred > SCRIBBLE_CUT, 255, 0).astype(np.uint8)


#: Directional 3x3 neighbourhoods: horizontal, vertical and the two diagonals.
_NMS_DIRECTIONS = (
    np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8),
    np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=np.uint8),
    np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.uint8),
    np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8),
)


def edge_nms(edges: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """Keep blurred edge pixels that are a maximum along some direction and above ``threshold``."""
    import cv2

    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), sigma)
    kept = np.zeros_like(blurred)
    for kernel in _NMS_DIRECTIONS:
        peak = cv2.dilate(blurred, kernel) == blurred
        kept[peak] = blurred[peak]
    return np.where(kept > threshold, 255, 0).astype(np.uint8)


def decode_lines(
    tpmap: np.ndarray,
    *,
    score: float = MLSD_SCORE,
    distance: float = MLSD_DISTANCE,
    top_k: int = MLSD_TOP_K,
    window: int = MLSD_WINDOW,
) -> np.ndarray:
    """Line segments (N, 4) as ``x0, y0, x1, y1`` in map pixels from one (5, h, w) TP map.

    A segment is kept where the centre's sigmoid is a local maximum of its ``window``, among the
    ``top_k`` highest, above ``score``, and the segment is longer than ``distance``.
    """
    centre = 1.0 / (1.0 + np.exp(-tpmap[0].astype(np.float64)))
    peaks = np.where(centre == _max_filter(centre, window), centre, 0.0)
    flat = peaks.ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    order = order[flat[order] > score]
    ys, xs = np.divmod(order, centre.shape[1])
    displacement = tpmap[1:5, ys, xs].astype(np.float64)
    lines = np.stack(
        [xs + displacement[0], ys + displacement[1], xs + displacement[2], ys + displacement[3]], axis=1
    )
    lengths = np.hypot(lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1])
    return lines[lengths > distance]


def _max_filter(values: np.ndarray, window: int) -> np.ndarray:
    """The maximum over a ``window`` x ``window`` neighbourhood, outside counting as -inf."""
    pad = window // 2
    padded = np.pad(values, pad, mode="constant", constant_values=-np.inf)
    height, width = values.shape
    shifts = [padded[dy : dy + height, dx : dx + width] for dy in range(window) for dx in range(window)]
    return np.max(shifts, axis=0)


def draw_lines(lines: np.ndarray, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """White one-pixel lines on black (H, W) uint8; map coordinates times ``scale`` (x, y)."""
    import cv2

    canvas = np.zeros((size[1], size[0]), dtype=np.uint8)
    for x0, y0, x1, y1 in lines:
        start = (round(x0 * scale[0]), round(y0 * scale[1]))
        end = (round(x1 * scale[0]), round(y1 * scale[1]))
        cv2.line(canvas, start, end, 255, 1)
    return canvas


def run_depth(session: Any, image: Image.Image) -> Image.Image:
    return resized(depth_image(predict_depth(session, image)), image.size)


def run_normal(session: Any, image: Image.Image) -> Image.Image:
    return resized(normal_image(predict_depth(session, image)), image.size)


def run_hed(session: Any, image: Image.Image) -> Image.Image:
    return grey(predict_edges(session, image))


def run_scribble(session: Any, image: Image.Image) -> Image.Image:
    return grey(scribble(predict_edges(session, image)))


def run_mlsd(session: Any, image: Image.Image) -> Image.Image:
    (tpmap,) = session.run(None, {"image": image_tensor(image, (MLSD_SIZE, MLSD_SIZE))})
    map_height, map_width = tpmap.shape[2:]
    lines = decode_lines(tpmap[0])
    return grey(draw_lines(lines, image.size, (image.width / map_width, image.height / map_height)))


def run_openpose(session: Any, image: Image.Image) -> Image.Image:
    from pipelines.imageops.pose import draw_pose, find_people, pose_maps

    scale = POSE_HEIGHT / image.height
    scaled = (max(1, round(image.width * scale)), POSE_HEIGHT)
    tensor = image_tensor(image, scaled)
    pad_h, pad_w = (-scaled[1]) % POSE_STRIDE, (-scaled[0]) % POSE_STRIDE
    # Padded with grey 128, which the network's normalisation (x / 256 - 0.5) maps to zero.
    tensor = np.pad(tensor, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), constant_values=128 / 255)
    pafs, heatmaps = session.run(None, {"image": tensor})
    keypoints, people = find_people(
        pose_maps(heatmaps[0], POSE_STRIDE, scaled), pose_maps(pafs[0], POSE_STRIDE, scaled)
    )
    keypoints[:, :2] *= (image.width / scaled[0], image.height / scaled[1])
    return Image.fromarray(draw_pose(image.size, keypoints, people))


def run_segment(session: Any, image: Image.Image) -> Image.Image:
    (classes,) = session.run(None, {"image": image_tensor(image, fixed_size(session, image.size))})
    class_map = Image.fromarray(classes[0].astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    return Image.fromarray(ADE20K_PALETTE[np.asarray(class_map)])


_RUNNERS: dict[str, Callable[[Any, Image.Image], Image.Image]] = {
    "depth": run_depth,
    "hed": run_hed,
    "mlsd": run_mlsd,
    "normal": run_normal,
    "openpose": run_openpose,
    "segment": run_segment,
    "scribble": run_scribble,
}

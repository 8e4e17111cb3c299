"""OpenPose body decoding: keypoint peaks, limbs scored along part affinity fields, people, drawing.

The 18 keypoints are COCO's in OpenPose's order (nose, neck, right shoulder, elbow, wrist, left
shoulder, elbow, wrist, right hip, knee, ankle, left hip, knee, ankle, right eye, left eye, right
ear, left ear); the network's 19th heatmap is the background. Each of the 19 limbs joins two
keypoints and has a PAF pair (x, y). Figures are the original body model's: peaks above 0.1 after a
sigma-3 blur, ten samples along a candidate limb, 80 % of them above 0.05 on the PAF, people with
at least four keypoints and a mean score of 0.4; limbs drawn as 4-pixel ellipses at 60 % opacity
over 4-pixel keypoint dots, each in its colour of the standard 18.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KEYPOINTS = 18
#: The keypoints each limb joins (0-based).
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
#: Each limb's PAF channels (x, y).
LIMB_PAFS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
#: The 18 standard colours (RGB) of keypoints and, in the same order, limbs.
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
PEAK_SIGMA = 3.0
PEAK_THRESHOLD = 0.1
#: At most this many peaks (the strongest) per keypoint: a flat or noisy heatmap has thousands,
#: and limbs are scored for every pair.
MAX_PEAKS = 64
LIMB_SAMPLES = 10
LIMB_THRESHOLD = 0.05
LIMB_SHARE = 0.8
MIN_KEYPOINTS = 4
MIN_MEAN_SCORE = 0.4
#: Limbs drawn: the last two (ear to shoulder) only help group people.
DRAWN_LIMBS = 17
STICK_WIDTH = 4
DOT_RADIUS = 4
LIMB_OPACITY = 0.6


@dataclass
class Person:
    """One person: the index into the keypoint list of each of the 18 parts (-1 if unseen)."""

    parts: np.ndarray = field(default_factory=lambda: np.full(KEYPOINTS, -1, dtype=np.int64))
    score: float = 0.0
    count: int = 0


def pose_maps(maps: np.ndarray, stride: int, scaled: tuple[int, int]) -> np.ndarray:
    """Network maps (C, h, w) at 1/``stride`` of the padded ``scaled`` image, as (H, W, C) of ``scaled``.

    Peaks and limbs are found at the size the network saw (368 high) and their coordinates scaled
    to the image, rather than resizing 57 maps to a large image first.
    """
    import cv2

    stacked = np.ascontiguousarray(maps.transpose(1, 2, 0).astype(np.float32))
    upsampled = cv2.resize(
        stacked, (maps.shape[2] * stride, maps.shape[1] * stride), interpolation=cv2.INTER_CUBIC
    )
    cropped = upsampled.reshape(upsampled.shape[0], upsampled.shape[1], maps.shape[0])
    return np.ascontiguousarray(cropped[: scaled[1], : scaled[0]])


def find_peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Per keypoint, its strongest peaks as rows ``x, y, score`` (score from the unblurred map)."""
    import cv2

    peaks = []
    for part in range(KEYPOINTS):
        original = heatmaps[:, :, part].astype(np.float32)
        blurred = cv2.GaussianBlur(original, (0, 0), PEAK_SIGMA)
        padded = np.pad(blurred, 1, mode="constant")
        centre = padded[1:-1, 1:-1]
        # Strictly above the left and upper neighbours, at least the right and lower ones: a
        # plateau (two equal pixels either side of a maximum, as upsampling makes) is one peak.
        is_peak = (
            (centre > padded[1:-1, :-2])
            & (centre >= padded[1:-1, 2:])
            & (centre > padded[:-2, 1:-1])
            & (centre >= padded[2:, 1:-1])
            & (centre > PEAK_THRESHOLD)
        )
        ys, xs = np.nonzero(is_peak)
        strongest = np.argsort(-original[ys, xs], kind="stable")[:MAX_PEAKS]
        ys, xs = ys[strongest], xs[strongest]
        peaks.append(np.stack([xs, ys, original[ys, xs]], axis=1) if len(xs) else np.zeros((0, 3)))
    return peaks


def limb_connections(
    peaks_a: np.ndarray, peaks_b: np.ndarray, paf: np.ndarray, image_height: int
) -> list[tuple[int, int, float]]:
    """``(a, b, score)`` of the chosen limbs between two keypoints' peaks, each peak used once.

    A candidate scores the mean dot product of its unit direction with the PAF at ten points along
    it, less a penalty for limbs longer than half the image; it counts when most samples agree.
    """
    if not len(peaks_a) or not len(peaks_b):
        return []
    starts = peaks_a[:, None, :2].astype(np.float64)
    vectors = peaks_b[None, :, :2] - starts
    norms = np.maximum(np.hypot(vectors[..., 0], vectors[..., 1]), 1e-3)
    units = vectors / norms[..., None]
    steps = np.linspace(0.0, 1.0, LIMB_SAMPLES)
    points = np.rint(starts[..., None, :] + steps[:, None] * vectors[..., None, :]).astype(np.int64)
    sampled = paf[points[..., 1], points[..., 0]]
    along = np.einsum("absc,abc->abs", sampled, units)
    scores = along.mean(axis=2) + np.minimum(0.5 * image_height / norms - 1, 0)
    agreeing = np.count_nonzero(along > LIMB_THRESHOLD, axis=2) > LIMB_SHARE * LIMB_SAMPLES
    candidates = [(int(a), int(b), float(scores[a, b])) for a, b in np.argwhere(agreeing & (scores > 0))]
    chosen: list[tuple[int, int, float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for a, b, score in sorted(candidates, key=lambda candidate: -candidate[2]):
        if a not in used_a and b not in used_b:
            chosen.append((a, b, score))
            used_a.add(a)
            used_b.add(b)
            if len(chosen) >= min(len(peaks_a), len(peaks_b)):
                break
    return chosen


def find_people(heatmaps: np.ndarray, pafs: np.ndarray) -> tuple[np.ndarray, list[Person]]:
    """Keypoints (K, 3: x, y, score) and the people assembled from them, from (H, W, C) maps."""
    peaks = find_peaks(heatmaps)
    offsets = np.cumsum([0, *(len(p) for p in peaks)])
    keypoints = np.concatenate(peaks, axis=0) if offsets[-1] else np.zeros((0, 3))
    people: list[Person] = []
    for limb, ((part_a, part_b), (paf_x, paf_y)) in enumerate(zip(LIMBS, LIMB_PAFS, strict=True)):
        paf = pafs[:, :, [paf_x, paf_y]]
        for a, b, score in limb_connections(peaks[part_a], peaks[part_b], paf, heatmaps.shape[0]):
            _join(people, limb, offsets[part_a] + a, offsets[part_b] + b, score, keypoints)
    kept = [p for p in people if p.count >= MIN_KEYPOINTS and p.score / p.count >= MIN_MEAN_SCORE]
    return keypoints, kept


def _join(people: list[Person], limb: int, a: int, b: int, score: float, keypoints: np.ndarray) -> None:
    """Add one limb (keypoints ``a`` and ``b``) to the people it touches, or start a person with it."""
    part_a, part_b = LIMBS[limb]
    owners = [p for p in people if p.parts[part_a] == a or p.parts[part_b] == b]
    if len(owners) == 2 and not np.any((owners[0].parts >= 0) & (owners[1].parts >= 0)):
        first, second = owners
        first.parts = np.where(first.parts >= 0, first.parts, second.parts)
        first.score += second.score + score
        first.count += second.count
        people.remove(second)
    elif owners:
        person = owners[0]
        if person.parts[part_b] != b:
            person.parts[part_b] = b
            person.count += 1
            person.score += float(keypoints[b, 2]) + score
    elif limb < DRAWN_LIMBS:
        person = Person()
        person.parts[[part_a, part_b]] = (a, b)
        person.count = 2
        person.score = float(keypoints[a, 2] + keypoints[b, 2]) + score
        people.append(person)


def draw_pose(size: tuple[int, int], keypoints: np.ndarray, people: list[Person]) -> np.ndarray:
    """The skeletons on black (H, W, 3) uint8: keypoint dots, then translucent limb ellipses."""
    import cv2

    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for person in people:
        for part, index in enumerate(person.parts):
            if index >= 0:
                x, y = keypoints[index, :2]
                cv2.circle(canvas, (int(x), int(y)), DOT_RADIUS, COLOURS[part], thickness=-1)
    for limb in range(DRAWN_LIMBS):
        part_a, part_b = LIMBS[limb]
        for person in people:
            a, b = person.parts[part_a], person.parts[part_b]
            if a < 0 or b < 0:
                continue
            (xa, ya), (xb, yb) = keypoints[a, :2], keypoints[b, :2]
            length = float(np.hypot(xb - xa, yb - ya))
            angle = float(np.degrees(np.arctan2(yb - ya, xb - xa)))
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            layer = canvas.copy()
            cv2.fillConvexPoly(layer, np.asarray(polygon, dtype=np.int32), COLOURS[limb])
            canvas = np.asarray(
                cv2.addWeighted(canvas, 1 - LIMB_OPACITY, layer, LIMB_OPACITY, 0), dtype=np.uint8
            )
    return canvas

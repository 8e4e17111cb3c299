"""The image safety classifier of ``edit-safety``: a CLIP vision encoder with a linear head, in ONNX.

A classifier folder holds::

    <folder>/model.onnx     pixel_values [batch, 3, size, size] -> probabilities [batch, labels]
    <folder>/config.json    {"labels": [...], "image_size": 224, "mean": [...], "std": [...]}
    <folder>/hash.txt

``probabilities`` is the softmax over the labels; the first label is the safe one, every other
label is a reason to flag the image (``nsfw``; a label named ``csam`` fails the job instead,
contract §6.3). Images are resized (bicubic) to a square of ``image_size`` and normalised with
CLIP's mean and deviation, as CLIP's own image processor does with its centre crop left out: a
classifier must see the whole image, not its middle.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.models.convert import export_module
from pipelines.models.layout import HASH_FILE, ONNX_FILE, hash_component

CONFIG_FILE = "config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class SafetySpec:
    """What a classifier folder says about its graph: its labels and its input."""

    labels: tuple[str, ...]
    image_size: int = 64
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @classmethod
    def read(cls, folder: Path) -> SafetySpec:
        data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        return cls(
            labels=tuple(str(label) for label in data["labels"]),
            image_size=int(data["image_size"]),
            mean=tuple(float(value) for value in data["mean"]),
            std=tuple(float(value) for value in data["std"]),
        )


def safety_classifier(config: Any, labels: int) -> Any:
    """A torch module: ``CLIPVisionModel`` (``config``) then a linear head over its pooled output."""
    import torch
    from transformers import CLIPVisionModel

    class SafetyClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = CLIPVisionModel(config)
            self.head = torch.nn.Linear(config.hidden_size, labels)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = self.encoder(pixel_values=pixel_values).pooler_output
            return torch.softmax(self.head(pooled), dim=-1)

    return SafetyClassifier().eval()


def export_safety_classifier(module: Any, dest: Path, spec: SafetySpec, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``module`` (pixel values -> probabilities) and its spec into the folder ``dest``."""
    import torch

    partial = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    example = torch.zeros(1, 3, spec.image_size, spec.image_size)
    export_module(
        module,
        (example,),
        partial / ONNX_FILE,
        opset,
        inputs={"pixel_values": {0: "batch"}},
        outputs={"probabilities": {0: "batch"}},
    )
    (partial / CONFIG_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    (partial / HASH_FILE).write_text(hash_component(partial) + "\n", encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def pixel_values(images: Sequence[Image.Image], spec: SafetySpec) -> np.ndarray:
    """The classifier's input for ``images``: resized, scaled to 0..1, normalised, NCHW float32."""
    size = (spec.image_size, spec.image_size)
    batch = np.stack(
        [
            np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32) / 255.0
            for image in images
        ]
    )
    batch = (batch - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def classify(session: Any, images: Sequence[Image.Image], spec: SafetySpec) -> np.ndarray:
    """Label probabilities, one row per image, from a session of the classifier's graph."""
    (probabilities,) = session.run(["probabilities"], {"pixel_values": pixel_values(images, spec)})
    return np.asarray(probabilities, np.float32)

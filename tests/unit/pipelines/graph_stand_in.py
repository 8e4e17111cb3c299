"""The GPU model of the CUDA-graph path (``GpuDiffusionModel``), standing in on the CPU.

``graph_model`` hands a run the model on the worker's GPU; without a GPU these tests give it
``OnCpu`` instead: the same calls (``predict_noise`` on tensors of its ``device``,
``decode_images``), answered by the model's own ONNX Runtime sessions and counted. What they check
is the route (which runs reach the GPU model, and with which rows) and the loop around it (device
moves, host callbacks, guidance): the CUDA sessions themselves are ``test_gpu_runtime``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

import pipelines.gpu.runtime as runtime
from pipelines.diffusion import model as sd
from pipelines.gpu.batch import CpuDenoiser


class OnCpu:
    """``GpuDiffusionModel``'s calls on the model's sessions; ``rows`` lists each UNet call's batch."""

    def __init__(self, model: sd.DiffusionModel) -> None:
        import torch

        self.model = model
        self.device = torch.device("cpu")
        self.stream = None
        self.rows: list[int] = []
        self.inputs: list[set[str]] = []
        self.decoded = 0

    def predict_noise(self, sample: Any, timestep: Any, conditioning: dict[str, Any]) -> Any:
        self._seen({"sample": sample, "timestep": timestep, **conditioning})
        return CpuDenoiser(self.model).predict_noise(sample, timestep, conditioning)

    def decode_images(self, latents: Any, scaling_factor: float) -> list[Image.Image]:
        assert scaling_factor == self.model.scaling_factor
        self.decoded += len(latents)
        return sd.decode_latents(self.model, latents.numpy())

    def _seen(self, feeds: dict[str, Any]) -> None:
        self.rows.append(len(feeds["sample"]))
        self.inputs.append(set(feeds))


class GraphModels:
    """Every ``OnCpu`` the patched ``graph_model`` handed out, in order."""

    def __init__(self) -> None:
        self.made: list[OnCpu] = []

    def __call__(self, model: sd.DiffusionModel, *, load: bool = True) -> OnCpu | None:
        """A new stand-in; with ``load=False`` (decoding) the one the run's UNet loop got, if any."""
        if not load:
            return next((made for made in reversed(self.made) if made.model.folder == model.folder), None)
        self.made.append(OnCpu(model))
        return self.made[-1]

    @property
    def rows(self) -> list[int]:
        return [rows for made in self.made for rows in made.rows]

    @property
    def decoded(self) -> int:
        return sum(made.decoded for made in self.made)


def route_to_cpu_stand_in(monkeypatch: pytest.MonkeyPatch) -> GraphModels:
    """Make ``graph_model`` answer as on a GPU worker, with ``OnCpu`` models."""
    models = GraphModels()
    monkeypatch.setattr(runtime, "graph_model", models)
    return models


def pixel_levels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])

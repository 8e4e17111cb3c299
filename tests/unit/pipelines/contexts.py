"""What the stage tests run stages in: a context on CPU sessions that records progress."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
from PIL import Image

from pipelines.context import StageContext


class Sessions:
    """A dict-backed session provider on the CPU, as the worker's cache would be."""

    def __init__(self) -> None:
        self.loaded: dict[Path, onnxruntime.InferenceSession] = {}

    def get(self, path: Path) -> onnxruntime.InferenceSession:
        if path not in self.loaded:
            self.loaded[path] = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self.loaded[path]


def stage_context(
    inputs: dict[str, Image.Image] | None = None,
    steps: list[int] | None = None,
    *,
    models_path: Path = Path("."),
    tiles: list[tuple[int, int]] | None = None,
) -> StageContext:
    """A context with the uploads ``inputs`` that records its steps and tiles into the lists given.

    The models folder matters only to stages that load a model.
    """
    return StageContext(
        models_path=models_path,
        sessions=Sessions(),
        inputs=inputs if inputs is not None else {},
        on_step=steps.append if steps is not None else lambda n: None,
        on_tile=(lambda done, total: tiles.append((done, total)))
        if tiles is not None
        else lambda done, total: None,
    )

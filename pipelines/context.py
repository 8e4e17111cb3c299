"""The interface between the chain executor and a stage.

A stage receives images, its resolved parameters and a context holding its callbacks
(progress, cancellation, the latents of a diffusion loop for live previews) and returns images.
It knows nothing about jobs, rows or buckets.

The resolved chain document (what the api stores in the job row and the worker runs)::

    {
      "version": 1,
      "kind": "txt2img",                  # txt2img | img2img | inpaint | upscale | blend | chain
      "stages": [
        {
          "name": "source",               # unique within the chain
          "type": "source-txt2img",       # a key of pipelines.stages.STAGES
          "params": {...},                # fully resolved: defaults applied, seed chosen
          "tiles": 8192,                  # effective maximum tile size in pixels
          "outscale": 1,                  # output scale used when re-assembling tiles
        },
        ...
      ],
      "output": {"format": "png", "thumbnail": true, "thumbnail_size": 1024},
      "metadata": {"input_size": {"width": 512, "height": 512}, ...},  # recorded on outputs
      "hashes": {"stable-diffusion-onnx-v1-5": "…"},  # the extras' hashes of its models (if any)
    }

Uploaded images reach stages through ``StageContext.inputs``, keyed ``source:<stage>`` and
``mask:<stage>`` (legacy routes store theirs under the name of the stage that reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    import numpy as np


class StageCancelled(Exception):
    """The job was cancelled; raised from a progress callback and left to unwind the chain."""


@dataclass
class StageImage:
    """One image travelling through the chain, with the metadata that describes how it was made."""

    image: Image.Image
    #: The metadata JSON of contract §7.3 (``params``, ``size``, ``models``, ...), built up by stages.
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageText:
    """A text a job produced (txt2txt), with the metadata that describes how it was made."""

    text: str
    #: The metadata JSON of contract §7.3, with ``text`` and the generation's own figures.
    metadata: dict[str, Any] = field(default_factory=dict)


#: What a job stores as its outputs: images, or the texts of a txt2txt job.
Output = StageImage | StageText


@dataclass(frozen=True)
class Counter:
    """A ``{current, total}`` progress counter."""

    current: int = 0
    total: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"current": self.current, "total": self.total}


@dataclass(frozen=True)
class Progress:
    """The three counters the api reports for a running job."""

    steps: Counter = Counter()
    stages: Counter = Counter()
    tiles: Counter = Counter()


class SessionProvider(Protocol):
    """Loads (and caches) ONNX Runtime sessions; see ``pipelines.models.sessions``."""

    def get(self, path: Path) -> Any: ...


@dataclass
class StageContext:
    """What a running stage may use besides its images and parameters."""

    #: Root of the models folder (contract §11.1).
    models_path: Path
    #: ONNX Runtime sessions, cached across jobs by the worker.
    sessions: SessionProvider
    #: Uploaded images by key (``source:<stage>``, ``mask:<stage>``); shared by the chain's stages,
    #: so a preparing stage (``edit-expand``) can hand a later stage its grown mask.
    inputs: dict[str, Image.Image] = field(default_factory=dict)
    #: Called after each diffusion step (or other unit of work): advances ``steps`` by ``n``.
    on_step: Callable[[int], None] = lambda n: None
    #: Called after each tile: ``(tiles done, tiles in this stage)``.
    on_tile: Callable[[int, int], None] = lambda done, total: None
    #: Raises ``StageCancelled`` when the job has been cancelled.
    check_cancelled: Callable[[], None] = lambda: None
    #: Called right after each diffusion step's ``on_step(1)`` with ``(steps done in this loop,
    #: family "sd" | "sdxl", a getter of the loop's latents)``: the worker's live preview
    #: (``pipelines.diffusion.model.LatentsCallback``). The getter copies only when called.
    on_latents: Callable[[int, str, Callable[[], np.ndarray]], None] = lambda step, family, latents: None
    #: Records images as outputs of the job (the persist stages call it).
    persist: Callable[[list[StageImage]], None] = lambda images: None
    #: Records images as extra outputs, listed after all others (img2img's filtered source).
    persist_extra: Callable[[list[StageImage]], None] = lambda images: None
    #: Records texts as outputs of the job (txt2txt's ``text-generate``).
    persist_text: Callable[[list[StageText]], None] = lambda texts: None
    #: Values a stage replaced for the later stages of the chain, by parameter name: ``{name: {old:
    #: new}}``. A later stage whose parameter ``name`` is ``old`` runs with ``new`` (``text-prompt``
    #: puts its expanded ``prompt`` here). Shared by the chain's stages, like ``inputs``.
    carry: dict[str, dict[Any, Any]] = field(default_factory=dict)

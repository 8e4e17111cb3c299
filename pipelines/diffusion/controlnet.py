"""ControlNet (``pipeline=controlnet``): txt2img conditioned on a control image, SD 1.x and SDXL.

The numerics follow diffusers' PyTorch ``StableDiffusionControlNetPipeline`` and
``StableDiffusionXLControlNetPipeline`` step for step: generation starts from onnx-web's seeded
noise, as txt2img does; at every UNet call the ControlNet runs on the same (guidance-doubled,
scheduler-scaled) latents, timestep and text conditioning (SDXL's pooled and size conditioning
too), with the control image in [0, 1] repeated for every row, and the model's ``cnet`` UNet adds
its residuals times the conditioning scale (the request's ``strength``). The layout of ControlNets
and ``cnet`` UNets is ``pipelines.models.controlnets``'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import SessionProvider
from pipelines.diffusion import model as sd
from pipelines.models.controlnets import (
    CNET_COMPONENT,
    CONTROL_IMAGE,
    DOWN_RESIDUAL,
    MID_RESIDUAL,
    controlnet_path,
    has_cnet,
)

#: The pipeline name (contract §5.5) that runs a ControlNet on the img2img route.
CONTROLNET_PIPELINE = "controlnet"


def load_controlnet(models_path: Path, name: str, sessions: SessionProvider) -> Any:
    """The ONNX Runtime session of ControlNet ``name`` (a ``control`` network)."""
    if not name:
        raise ValueError("pipeline controlnet needs control: the name of a ControlNet")
    path = controlnet_path(models_path, name)
    if not path.is_file():
        raise FileNotFoundError(f"no ControlNet named {name!r} in the models folder")
    return sessions.get(path)


def control_array(image: Image.Image, rows: int) -> np.ndarray:
    """The control image as ``(rows, 3, H, W)`` float32 in [0, 1], as diffusers' ControlNet pipelines want."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(pixels.transpose(2, 0, 1)[None], rows, axis=0)


def residual_inputs(session: Any) -> set[str]:
    """The residual inputs a ``cnet`` UNet takes, or the residual outputs a ControlNet gives."""
    names = {item.name for item in session.get_inputs()} | {item.name for item in session.get_outputs()}
    prefix = DOWN_RESIDUAL.format("")
    return {name for name in names if name.startswith(prefix) or name == MID_RESIDUAL}


def misfit_tensors(unet: Any, controlnet: Any) -> list[str]:
    """The ControlNet's tensors the ``cnet`` UNet takes differently (or not at all), by name.

    Its inputs but the control image are the UNet's own inputs, and its outputs the residuals
    the UNet takes: the same names, ranks and fixed sizes (channels, text widths).
    """
    takes = {item.name: item for item in unet.get_inputs()}
    given = [item for item in controlnet.get_inputs() if item.name != CONTROL_IMAGE]
    given += controlnet.get_outputs()
    misfits = [item.name for item in given if not _same_shape(item, takes.get(item.name))]
    missing = residual_inputs(unet) - residual_inputs(controlnet)
    return misfits + sorted(missing)


def _same_shape(item: Any, other: Any) -> bool:
    if other is None or len(item.shape) != len(other.shape):
        return False
    return all(
        a == b
        for a, b in zip(item.shape, other.shape, strict=True)
        if isinstance(a, int) and isinstance(b, int)
    )


@dataclass(frozen=True)
class ControlledUnet:
    """A session-like UNet: each call runs the ControlNet on the same inputs, then adds its residuals.

    ``Run.denoise`` (and SDXL's) call it where they would call the model's UNet session.
    """

    #: The model's ``cnet`` UNet session.
    unet: Any
    controlnet: Any
    #: ``control_array`` with one row per UNet row (guidance doubles them).
    control: np.ndarray
    #: The conditioning scale the residuals are multiplied by.
    scale: float

    def get_inputs(self) -> Any:
        return self.unet.get_inputs()

    def run(self, outputs: Any, feeds: Mapping[str, np.ndarray]) -> Any:
        """``unet.run`` with the ControlNet's residuals for ``feeds`` added to ``feeds``."""
        wanted = {item.name: item for item in self.controlnet.get_inputs()}
        given = {**feeds, CONTROL_IMAGE: self.control}
        control_feeds = {
            name: value.astype(sd.input_type(self.controlnet, name, value.dtype))
            for name, value in given.items()
            if name in wanted
        }
        names = [item.name for item in self.controlnet.get_outputs()]
        scale = np.float32(self.scale)
        residuals = {
            name: (residual * scale).astype(sd.input_type(self.unet, name, np.float32))
            for name, residual in zip(names, self.controlnet.run(None, control_feeds), strict=True)
        }
        return self.unet.run(outputs, {**feeds, **residuals})


def controlled_unet(run: sd.Run, controlnet: Any, control_image: Image.Image, scale: float) -> ControlledUnet:
    """The run's ``cnet`` UNet driven by ``controlnet`` on ``control_image`` at conditioning ``scale``.

    Fails with a reason a person can act on when the model has no ``cnet`` UNet or the ControlNet
    was made for another kind of model.
    """
    generation = run.generation
    if not has_cnet(run.model.folder):
        raise ValueError(
            f"model {generation.model} has no ControlNet UNet ({CNET_COMPONENT}/): "
            "convert it with --cnet to run pipeline controlnet"
        )
    if control_image.size != (generation.width, generation.height):
        raise ValueError(
            f"the control image is {control_image.width}x{control_image.height}, "
            f"the generation {generation.width}x{generation.height}"
        )
    unet = run.model.session(CNET_COMPONENT)
    misfits = misfit_tensors(unet, controlnet)
    if misfits:
        raise ValueError(
            f"the ControlNet does not fit {generation.model}'s UNet ({', '.join(misfits)} differ): "
            "it was made for another kind of model"
        )
    rows = generation.batch * (2 if generation.guidance else 1)
    return ControlledUnet(unet, controlnet, control_array(control_image, rows), scale)


def controlnet_txt2img(
    run: sd.Run, control_image: Image.Image, scale: float, *, controlnet: Any
) -> list[Image.Image]:
    """Generate ``generation.batch`` images at the control image's size, conditioned on it.

    ``run`` is an ``SdxlRun`` for an SDXL model (its UNet loop adds the pooled and size
    conditioning, which the ControlNet gets as well); ``scale`` 0 gives txt2img's images.
    """
    unet = controlled_unet(run, controlnet, control_image, scale)
    embeddings = run.prompt_embeddings()
    scheduler = run.scheduler()
    return run.decode(run.denoise(scheduler, run.starting_latents(scheduler), embeddings, unet=unet))

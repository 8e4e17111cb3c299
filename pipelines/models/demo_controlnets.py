"""Random-weight ControlNets for the demo SD 1.5 and SDXL models.

``make run`` builds them into ``models/control`` beside the demo models (converted with their
``cnet`` UNets), so ``/api/settings/models`` lists networks of type ``control`` and
``pipeline=controlnet`` runs on the demo models. Each is a diffusers ``ControlNetModel`` made from
its model's UNet (as ControlNet training starts), whose zero-initialised parts (the conditioning
embedding's last convolution and the residual projections) get seeded random weights, so the
control image really changes the result. The diffusers source is kept (``torch_source_path``) for
the reference tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.models.controlnets import CONTROL_FOLDER, write_controlnet
from pipelines.models.layout import ONNX_FILE

#: Channels of the conditioning embedding: three halvings take a 64-px image to the 8 latent cells.
CONDITIONING_CHANNELS = (8, 16, 16, 32)
#: Standard deviation of the random weights given to the zero-initialised convolutions.
ZERO_CONV_SCALE = 0.1


@dataclass(frozen=True)
class DemoControlNet:
    """One demo ControlNet: its network name, the demo model it conditions, its weights' seed."""

    name: str
    model: str
    seed: int


def demo_controlnets() -> tuple[DemoControlNet, ...]:
    """The demo ControlNets: one for the SD 1.5 demo, one for the SDXL demo."""
    from pipelines.models.demo import DEMO_MODELS, DEMO_SDXL

    return (
        DemoControlNet("demo-control", DEMO_MODELS[0].name, 11),
        DemoControlNet("demo-control-sdxl", DEMO_SDXL, 12),
    )


def controlnet_source_path(models_path: Path, name: str) -> Path:
    """Where the diffusers (torch) folder of demo ControlNet ``name`` is kept."""
    from pipelines.models.demo import torch_source_path

    return torch_source_path(models_path, f"{CONTROL_FOLDER}-{name}")


def random_controlnet(unet: Any, seed: int) -> Any:
    """A ``ControlNetModel`` from ``unet``'s config and weights, its zero convolutions made random."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    generator = torch.Generator().manual_seed(seed)
    zeroed = (
        controlnet.controlnet_cond_embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    )
    with torch.no_grad():
        for module in zeroed:
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * ZERO_CONV_SCALE)
    return controlnet.eval()


def build_demo_controlnets(models_path: Path, *, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the demo ControlNets (after their demo models) unless they exist; their folders."""
    from diffusers import UNet2DConditionModel

    from pipelines.models.demo import torch_source_path

    folders = []
    for demo in demo_controlnets():
        dest = models_path / CONTROL_FOLDER / demo.name
        if not (dest / ONNX_FILE).is_file():
            if progress is not None:
                progress(
                    f"{CONTROL_FOLDER}/{demo.name}: building a random-weight ControlNet for {demo.model}"
                )
            unet = UNet2DConditionModel.from_pretrained(torch_source_path(models_path, demo.model) / "unet")
            controlnet = random_controlnet(unet, demo.seed)
            controlnet.save_pretrained(controlnet_source_path(models_path, demo.name))
            write_controlnet(controlnet, dest)
        folders.append(dest)
    return folders

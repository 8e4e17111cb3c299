"""ControlNets on disk: the ``cnet`` UNet a model folder may carry, and the ControlNets themselves.

A ControlNet adds residuals to a UNet's skip connections and middle block. ONNX graphs have no
optional inputs, so a model that runs ControlNets gets a second UNet graph, ``cnet``, beside its
``unet`` (as onnx-web's converter makes one)::

    <model>/cnet/model.onnx         sample, timestep, encoder_hidden_states, [text_embeds, time_ids],
                                    down_block_0 ... down_block_N, mid_block_additional_residual
                                    -> out_sample

and every ControlNet is a folder of the ``control`` networks (contract §5.3)::

    <models>/control/<name>/model.onnx     sample, timestep, encoder_hidden_states, controlnet_cond,
                                           [text_embeds, time_ids]
                                           -> down_block_0 ... down_block_N, mid_block_additional_residual
    <models>/control/<name>/config.json    the diffusers ``ControlNetModel`` config

A ControlNet's outputs are named as the ``cnet`` UNet's inputs, so one feeds the other by name.
Its residuals come out unscaled (``conditioning_scale`` 1): the pipeline scales them per request.
``controlnet_cond`` is the control image in [0, 1], as diffusers' ControlNet pipelines prepare it.
onnx-web's own pre-converted ``control/<name>.onnx`` files are found too, but their names differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pipelines.models.convert import (
    DEFAULT_OPSET,
    IMAGE_AXES,
    SDXL_EMBED_TYPE,
    TRACE_BATCH,
    export_module,
    sdxl_trace_inputs,
    unet_trace_side,
)
from pipelines.models.layout import ONNX_FILE

#: The model folder's UNet that takes ControlNet residuals.
CNET_COMPONENT = "cnet"
#: The networks folder ControlNets live in (contract §5.3).
CONTROL_FOLDER = "control"
CONTROL_CONFIG = "config.json"
#: Inputs of the ``cnet`` UNet (and outputs of a ControlNet): one per down-block residual, then the middle's.
DOWN_RESIDUAL = "down_block_{}"
MID_RESIDUAL = "mid_block_additional_residual"
#: The ControlNet's image input.
CONTROL_IMAGE = "controlnet_cond"
#: SDXL UNets' (and ControlNets') extra conditioning: ``addition_embed_type``.

Family = Literal["sd", "sdxl"]


def cnet_path(model_folder: Path) -> Path:
    """Where a model folder keeps its ``cnet`` UNet graph."""
    return model_folder / CNET_COMPONENT / ONNX_FILE


def has_cnet(model_folder: Path) -> bool:
    """Whether the model was converted with a ``cnet`` UNet (``--cnet``)."""
    return cnet_path(model_folder).is_file()


def controlnet_path(models_path: Path, name: str) -> Path:
    """ControlNet ``name``'s graph: ``control/<name>/model.onnx``, else onnx-web's ``control/<name>.onnx``."""
    folder = models_path / CONTROL_FOLDER / name
    return folder / ONNX_FILE if folder.is_dir() else folder.with_name(f"{name}.onnx")


def controlnet_family(models_path: Path, name: str) -> Family | None:
    """The model family ControlNet ``name`` conditions (from its config), or ``None`` if it has none."""
    config_file = models_path / CONTROL_FOLDER / name / CONTROL_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return "sdxl" if config.get("addition_embed_type") == SDXL_EMBED_TYPE else "sd"


def residual_names(count: int) -> list[str]:
    """The residual tensors' names: ``count`` down-block ones, then the middle block's."""
    return [DOWN_RESIDUAL.format(index) for index in range(count)] + [MID_RESIDUAL]


def residual_layout(config: Any) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """``(channels, halvings)`` of each down-block residual of a UNet or ControlNet, and of the middle's.

    The down path yields ``conv_in``'s output, then each resnet's output and each down-sampler's
    (all blocks but the last down-sample): what a ControlNet returns and a UNet adds back.
    """
    blocks = list(config.block_out_channels)
    layers = config.layers_per_block
    per_block = [layers] * len(blocks) if isinstance(layers, int) else list(layers)
    down = [(blocks[0], 0)]
    for index, channels in enumerate(blocks):
        down += [(channels, index)] * per_block[index]
        if index < len(blocks) - 1:
            down.append((channels, index + 1))
    return down, (blocks[-1], len(blocks) - 1)


def _added(config: Any, extra: Sequence[Any]) -> dict[str, Any] | None:
    if config.addition_embed_type != SDXL_EMBED_TYPE:
        return None
    return {"text_embeds": extra[0], "time_ids": extra[1]}


def _residual_axes(layout: list[tuple[int, int]]) -> list[dict[int, str]]:
    return [{0: "batch", 2: f"height_{halvings}", 3: f"width_{halvings}"} for _, halvings in layout]


def export_cnet_unet(unet: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export a ``UNet2DConditionModel`` that adds ControlNet residuals given as inputs.

    The inputs are the plain UNet's (``pipelines.models.convert.export_unet``) followed by one
    tensor per down-block residual and the middle block's; zeros give the plain UNet's output.
    """
    import torch

    config = unet.config
    down, mid = residual_layout(config)
    names = residual_names(len(down))
    extra_count = 2 if config.addition_embed_type == SDXL_EMBED_TYPE else 0

    class CnetUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Named ``model`` as in the plain UNet's export, so LoRAs find the same weights.
            self.model = unet

        def forward(
            self,
            sample: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            *rest: torch.Tensor,
        ) -> torch.Tensor:
            extra, residuals = rest[:extra_count], rest[extra_count:]
            return self.model(
                sample,
                timestep,
                encoder_hidden_states,
                added_cond_kwargs=_added(config, extra),
                down_block_additional_residuals=tuple(residuals[:-1]),
                mid_block_additional_residual=residuals[-1],
                return_dict=False,
            )[0]

    side = unet_trace_side(config)
    sample = torch.randn((TRACE_BATCH, config.in_channels, side, side))
    timestep = torch.full((TRACE_BATCH,), 999.0)
    hidden = torch.randn((TRACE_BATCH, 77, config.cross_attention_dim))
    extra_args, extra_axes = sdxl_trace_inputs(config)
    residuals = tuple(
        torch.randn((TRACE_BATCH, channels, side >> halvings, side >> halvings))
        for channels, halvings in (*down, mid)
    )
    inputs: dict[str, dict[int, str]] = {
        "sample": IMAGE_AXES,
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        **extra_axes,
        **dict(zip(names, _residual_axes([*down, mid]), strict=True)),
    }
    args = (sample, timestep, hidden, *extra_args, *residuals)
    export_module(CnetUNet(), args, path, opset, inputs=inputs, outputs={"out_sample": IMAGE_AXES})


def export_controlnet(controlnet: Any, dest: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export a diffusers ``ControlNetModel`` to ``dest/model.onnx`` with its ``config.json``.

    The graph returns the residuals unscaled, named as the ``cnet`` UNet's inputs.
    """
    import torch

    config = controlnet.config
    down, mid = residual_layout(config)
    names = residual_names(len(down))

    class ControlNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = controlnet

        def forward(
            self,
            sample: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            controlnet_cond: torch.Tensor,
            *extra: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            down_residuals, mid_residual = self.model(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                added_cond_kwargs=_added(config, extra),
                return_dict=False,
            )
            return (*down_residuals, mid_residual)

    side = unet_trace_side(config)
    # The conditioning embedding brings the image down to the latents' size, halving at each step.
    image_side = side * 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    extra_args, extra_axes = sdxl_trace_inputs(config)
    args = (
        torch.randn((TRACE_BATCH, config.in_channels, side, side)),
        torch.full((TRACE_BATCH,), 999.0),
        torch.randn((TRACE_BATCH, 77, config.cross_attention_dim)),
        torch.rand((TRACE_BATCH, config.conditioning_channels, image_side, image_side)),
        *extra_args,
    )
    inputs: dict[str, dict[int, str]] = {
        "sample": IMAGE_AXES,
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        CONTROL_IMAGE: {0: "batch", 2: "image_height", 3: "image_width"},
        **extra_axes,
    }
    outputs = dict(zip(names, _residual_axes([*down, mid]), strict=True))
    export_module(ControlNet(), args, dest / ONNX_FILE, opset, inputs=inputs, outputs=outputs)
    controlnet.save_config(dest)
    return dest


def write_controlnet(controlnet: Any, dest: Path, opset: int = DEFAULT_OPSET) -> Path:
    """``export_controlnet`` into a hidden folder beside ``dest``, then renamed to it (replacing it).

    The networks list skips dot-names, so it never shows half a ControlNet.
    """
    import shutil

    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    export_controlnet(controlnet, partial, opset)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def convert_controlnet_folder(
    src: Path,
    dest: Path,
    *,
    opset: int = DEFAULT_OPSET,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Export the diffusers ``ControlNetModel`` folder ``src`` (SD 1.x or SDXL) to ``dest``."""
    from diffusers import ControlNetModel

    report = progress or (lambda line: None)
    report(f"{dest.name}: exporting ControlNet")
    write_controlnet(ControlNetModel.from_pretrained(src).eval(), dest, opset)
    report(f"{dest.name}: done")
    return dest

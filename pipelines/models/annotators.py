"""Export the ControlNet annotator networks (the model-based source filters) to ONNX.

Each annotator model is one folder, ``<models>/filter/<model>/`` holding ``model.onnx`` and
``hash.txt``; :mod:`pipelines.imageops.annotators` runs it. Models and the filters they serve:
``depth`` (depth, normal), ``hed`` (hed, scribble), ``mlsd``, ``openpose``, ``segment``.

Every graph takes ``image`` (N, 3, H, W) RGB in [0, 1]; the wrapped module normalises it as its
network was trained. Outputs, by model: ``depth`` (N, H, W) relative inverse depth; ``edges``
(N, 1, H, W) in [0, 1]; ``tpmap`` (N, 5, H/2, W/2); ``pafs`` and ``heatmaps`` at H/8; ``classes``
(N, H, W) int64, the argmax of the 150 ADE20K logits. ``depth`` and ``segment`` are traced at a
fixed size (DPT's position embeddings and UperNet's pyramid pooling are sized when traced), which
the runtime resizes to; the others take any size.

Real checkpoints load by state dict: DPT and UperNet from a local transformers folder
(``from_pretrained``, e.g. ``Intel/dpt-large``, ``openmmlab/upernet-convnext-small``), HED, M-LSD
and OpenPose from a ``.pth`` state dict of :mod:`pipelines.models.annotator_networks`'s modules
(HED also in the public PyTorch port's layer names), with the full-size config unless one is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.imageops.annotators import model_folder
from pipelines.models.annotator_networks import (
    Hed,
    HedConfig,
    Mlsd,
    MlsdConfig,
    OpenPoseBody,
    OpenPoseConfig,
    rename_hed_port,
)
from pipelines.models.convert import export_module
from pipelines.models.layout import HASH_FILE, ONNX_FILE, hash_component

OPSET = 17
#: The size ``depth`` and ``segment`` are traced at: DPT-Large's 384; for UperNet the size nearest
#: ControlNet's 512 whose 1/32 map (18) the pyramid pooling's bins (1, 2, 3, 6) divide, which
#: the exporter needs (at 512 the map is 16, which 3 and 6 do not divide).
FIXED_SIZES = {"depth": 384, "segment": 576}
#: The size the other models are traced at (their graphs take any size).
TRACE_SIZE = 64
#: Each model's graph outputs and their dynamic axes.
OUTPUTS: dict[str, dict[str, dict[int, str]]] = {
    "depth": {"depth": {0: "batch"}},
    "hed": {"edges": {0: "batch", 2: "height", 3: "width"}},
    "mlsd": {"tpmap": {0: "batch", 2: "map_height", 3: "map_width"}},
    "openpose": {
        "pafs": {0: "batch", 2: "map_height", 3: "map_width"},
        "heatmaps": {0: "batch", 2: "map_height", 3: "map_width"},
    },
    "segment": {"classes": {0: "batch"}},
}
#: Normalisation of the transformers networks' inputs: DPT's processor (0.5, 0.5), UperNet's ImageNet.
DPT_MEAN, DPT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "hed": (Hed, HedConfig),
    "mlsd": (Mlsd, MlsdConfig),
    "openpose": (OpenPoseBody, OpenPoseConfig),
}


class Normalised(nn.Module):
    """A transformers vision model behind ``(image - mean) / std``, returning one named output.

    With ``argmax`` the output is its index of the largest channel (a class map), which keeps a
    (N, 150, H, W) float tensor out of the session's outputs.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        network: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        output: str,
        *,
        argmax: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.output = output
        self.argmax = argmax
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = getattr(self.network(pixel_values=(image - self.mean) / self.std), self.output)
        return output.argmax(dim=1) if self.argmax else output


def depth_module(network: nn.Module) -> nn.Module:
    """A ``DPTForDepthEstimation`` taking RGB in [0, 1] and returning ``predicted_depth``."""
    return Normalised(network, DPT_MEAN, DPT_STD, "predicted_depth").eval()


def segment_module(network: nn.Module) -> nn.Module:
    """An ``UperNetForSemanticSegmentation`` taking RGB in [0, 1] and returning each pixel's class."""
    return Normalised(network, IMAGENET_MEAN, IMAGENET_STD, "logits", argmax=True).eval()


def trace_size(model: str) -> int:
    """The side of the square image a model is traced at."""
    return FIXED_SIZES.get(model, TRACE_SIZE)


def export_annotator(model: str, module: nn.Module, models_path: Path) -> Path:
    """Export ``module`` as annotator ``model`` into ``<models>/filter/<model>/``; returns the graph's path.

    The graph is written under another name first, so an interrupted export leaves no half model.
    """
    if model not in OUTPUTS:
        raise ValueError(f"unknown annotator model {model!r}: expected one of {', '.join(OUTPUTS)}")
    folder = model_folder(models_path, model)
    size = trace_size(model)
    image_axes = {} if model in FIXED_SIZES else {0: "batch", 2: "height", 3: "width"}
    partial = folder / (ONNX_FILE + ".tmp")
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    export_module(
        module.eval(), (example,), partial, OPSET, inputs={"image": image_axes}, outputs=OUTPUTS[model]
    )
    partial.replace(folder / ONNX_FILE)
    (folder / HASH_FILE).write_text(hash_component(folder) + "\n")
    return folder / ONNX_FILE


def load_annotator(model: str, source: Path, config: Mapping[str, Any] | None = None) -> nn.Module:
    """The torch module of a real checkpoint, ready to export.

    ``source`` is a transformers folder for ``depth`` and ``segment``, a ``.pth`` state dict for
    the others; ``config`` overrides fields of their full-size config (e.g. ``{"stages": 2}``).

    Raises:
        ValueError: an unknown model, or a state dict that does not fit the architecture.
    """
    if model == "depth":
        from transformers import DPTForDepthEstimation

        return depth_module(DPTForDepthEstimation.from_pretrained(source))
    if model == "segment":
        from transformers import UperNetForSemanticSegmentation

        return segment_module(UperNetForSemanticSegmentation.from_pretrained(source))
    if model not in NETWORKS:
        raise ValueError(f"unknown annotator model {model!r}: expected one of {', '.join(OUTPUTS)}")
    network_type, config_type = NETWORKS[model]
    config_fields = {
        key: tuple(value) if isinstance(value, list) else value for key, value in (config or {}).items()
    }
    network = network_type(config_type(**config_fields))
    state_dict = torch.load(source, map_location="cpu", weights_only=True)
    if model == "hed":
        state_dict = rename_hed_port(state_dict)
    try:
        network.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(f"{source} is not a {model} checkpoint of this config: {err}") from err
    return network.eval()


def convert_annotator(
    model: str, source: Path, models_path: Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Load a real checkpoint (``load_annotator``) and export it into the models folder."""
    return export_annotator(model, load_annotator(model, source, config), models_path)

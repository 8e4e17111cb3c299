"""The ControlNet annotator networks we write ourselves: HED, M-LSD and the OpenPose body model.

Each is a torch module built from a frozen config (the full-size figures of its paper by default;
the demo builder passes tiny ones) that takes ``image`` (N, 3, H, W) RGB in [0, 1] and does its own
input normalisation, so the ONNX graph exported from it needs no preprocessing but a resize.

- ``Hed``: holistically-nested edge detection (Xie & Tu 2015). VGG-16's five conv stages, a 1x1
  side output after each, upsampled to the input size, fused by a learned 1x1 conv; returns the
  sigmoid of the fusion (N, 1, H, W). The ``stages.i`` layers sit at the Sequential indices of the
  widely shared PyTorch port (``netVggOne.0``, ``netVggTwo.1`` …), so its weights load by renaming
  (:data:`HED_PORT_PREFIXES`); the input is BGR x 255 minus the Caffe mean, as trained.
- ``Mlsd``: M-LSD (Gu et al. 2021). A MobileNetV2 backbone of inverted residuals, a decoder fusing
  each backbone scale from deep to shallow (1x1 projections, concatenation, 3x3 refinement), a
  dilated head; returns the TP map at half the input size: channel 0 the centre-point logits,
  channels 1-4 the displacement to the segment's two ends (x0, y0, x1, y1).
- ``OpenPoseBody``: the CMU body model (Cao et al. 2017). The first ten VGG-19 convs, two CPM
  convs, then stages of two branches (part affinity fields, keypoint heatmaps) each refining the
  previous stage's maps; returns ``(pafs, heatmaps)`` at 1/8 of the input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

#: The BGR mean HED was trained with (Caffe's ImageNet mean, on a 0-255 scale).
HED_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
#: Layer name prefixes of the public PyTorch HED port (old and new spellings) and ours.
HED_PORT_PREFIXES = {
    **{
        f"{prefix}Vgg{n}.": f"stages.{i}."
        for prefix in ("module", "net")
        for i, n in enumerate(("One", "Two", "Thr", "Fou", "Fiv"))
    },
    **{
        f"{prefix}Score{n}.": f"sides.{i}."
        for prefix in ("module", "net")
        for i, n in enumerate(("One", "Two", "Thr", "Fou", "Fiv"))
    },
    **{f"{prefix}Combine.0.": "fuse." for prefix in ("module", "net")},
}
#: The value M-LSD's fourth input channel (a plane of ones) has after its normalisation.
MLSD_ONES = 1 / 127.5 - 1


@dataclass(frozen=True)
class HedConfig:
    """Channels and conv count of each VGG stage."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    depths: tuple[int, ...] = (2, 2, 3, 3, 3)


class Hed(nn.Module):
    """HED: five VGG stages, a side output per stage, a learned fusion."""

    mean: torch.Tensor

    def __init__(self, config: HedConfig = HedConfig()) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        channels = 3
        for index, (width, depth) in enumerate(zip(config.widths, config.depths, strict=True)):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if index else []
            for _ in range(depth):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            self.stages.append(nn.Sequential(*layers))
        self.sides = nn.ModuleList(nn.Conv2d(width, 1, 1) for width in config.widths)
        self.fuse = nn.Conv2d(len(config.widths), 1, 1)
        self.register_buffer("mean", torch.tensor(HED_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = image.flip(1) * 255.0 - self.mean
        size = image.shape[2:]
        sides = []
        for stage, side in zip(self.stages, self.sides, strict=True):
            features = stage(features)
            sides.append(
                functional.interpolate(side(features), size=size, mode="bilinear", align_corners=False)
            )
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


def rename_hed_port(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with the public PyTorch port's layer names turned into ours (others kept)."""
    renamed = {}
    for key, value in state_dict.items():
        prefix = next((p for p in HED_PORT_PREFIXES if key.startswith(p)), None)
        renamed[HED_PORT_PREFIXES[prefix] + key[len(prefix) :] if prefix else key] = value
    return renamed


def _conv_bn(
    inputs: int, outputs: int, kernel: int, *, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU6(),
    )


@dataclass(frozen=True)
class MlsdConfig:
    """MobileNetV2's stem and inverted-residual groups (expansion, width, repeats, stride), decoder width."""

    stem: int = 32
    groups: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
    )
    decoder: int = 64
    #: Dilation of the head's first conv, which widens its view along long segments.
    head_dilation: int = 5


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise conv, linear 1x1 projection, skip if shapes allow."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        layers: list[nn.Module] = [_conv_bn(inputs, hidden, 1)] if expansion != 1 else []
        layers += [
            _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        ]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and inputs == outputs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.block(features)
        return features + out if self.skip else out


class _Fuse(nn.Module):
    """One decoder step: project the deeper map and the skip, upsample the deeper one, concatenate, refine."""

    def __init__(self, deep: int, skip: int, width: int) -> None:
        super().__init__()
        self.deep = _conv_bn(deep, width, 1)
        self.skip = _conv_bn(skip, width, 1)
        self.refine = nn.Sequential(_conv_bn(2 * width, width, 3), _conv_bn(width, width, 3))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = functional.interpolate(
            self.deep(deep), size=skip.shape[2:], mode="bilinear", align_corners=True
        )
        return self.refine(torch.cat([self.skip(skip), upsampled], dim=1))


class Mlsd(nn.Module):
    """M-LSD: MobileNetV2 encoder, top-down fusion decoder, TP-map head at half resolution."""

    def __init__(self, config: MlsdConfig = MlsdConfig()) -> None:
        super().__init__()
        self.stem = _conv_bn(4, config.stem, 3, stride=2)
        self.groups = nn.ModuleList()
        channels = config.stem
        widths = []
        for expansion, width, repeats, stride in config.groups:
            blocks = [
                InvertedResidual(channels if i == 0 else width, width, stride if i == 0 else 1, expansion)
                for i in range(repeats)
            ]
            self.groups.append(nn.Sequential(*blocks))
            channels = width
            widths.append(width)
        deep = widths[-1]
        self.fuses = nn.ModuleList()
        for skip in reversed(widths[:-1]):
            self.fuses.append(_Fuse(deep, skip, config.decoder))
            deep = config.decoder
        self.head = nn.Sequential(
            _conv_bn(config.decoder, config.decoder, 3, dilation=config.head_dilation),
            _conv_bn(config.decoder, config.decoder, 3),
            nn.Conv2d(config.decoder, 5, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ones = torch.full_like(image[:, :1], MLSD_ONES)
        features = self.stem(torch.cat([image * 2.0 - 1.0, ones], dim=1))
        skips = []
        for group in self.groups:
            features = group(features)
            skips.append(features)
        for fuse, skip in zip(self.fuses, reversed(skips[:-1]), strict=True):
            features = fuse(features, skip)
        return self.head(features)


@dataclass(frozen=True)
class OpenPoseConfig:
    """VGG-19 front (widths, ``0`` for a max-pool), CPM widths, stage widths and count, map counts."""

    backbone: tuple[int, ...] = (64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512)
    cpm: tuple[int, ...] = (256, 128)
    first_width: int = 128
    first_hidden: int = 512
    refine_width: int = 128
    stages: int = 6
    #: 19 limbs x (x, y) and 18 keypoints plus the background.
    pafs: int = 38
    heatmaps: int = 19


def _relu_convs(inputs: int, widths: tuple[int, ...], kernel: int) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for width in widths:
        if width == 0:
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(inputs, width, kernel, padding=kernel // 2), nn.ReLU()]
        inputs = width
    return layers, inputs


def _branch(inputs: int, widths: tuple[int, ...], kernel: int, hidden: int, outputs: int) -> nn.Sequential:
    layers, channels = _relu_convs(inputs, widths, kernel)
    layers += [nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, outputs, 1)]
    return nn.Sequential(*layers)


class OpenPoseBody(nn.Module):
    """OpenPose's two-branch, multi-stage body network."""

    def __init__(self, config: OpenPoseConfig = OpenPoseConfig()) -> None:
        super().__init__()
        front, features = _relu_convs(3, (*config.backbone, *config.cpm), 3)
        self.backbone = nn.Sequential(*front)
        first = (config.first_width,) * 3
        refine = (config.refine_width,) * 5
        maps = config.pafs + config.heatmaps
        self.paf_stages = nn.ModuleList([_branch(features, first, 3, config.first_hidden, config.pafs)])
        self.heatmap_stages = nn.ModuleList(
            [_branch(features, first, 3, config.first_hidden, config.heatmaps)]
        )
        for _ in range(config.stages - 1):
            self.paf_stages.append(_branch(features + maps, refine, 7, config.refine_width, config.pafs))
            self.heatmap_stages.append(
                _branch(features + maps, refine, 7, config.refine_width, config.heatmaps)
            )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Trained on BGR / 256 - 0.5.
        features = self.backbone(image.flip(1) * (255.0 / 256.0) - 0.5)
        stage_input = features
        for paf_stage, heatmap_stage in zip(self.paf_stages, self.heatmap_stages, strict=True):
            pafs, heatmaps = paf_stage(stage_input), heatmap_stage(stage_input)
            stage_input = torch.cat([pafs, heatmaps, features], dim=1)
        return pafs, heatmaps

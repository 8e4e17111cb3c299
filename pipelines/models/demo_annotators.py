"""Tiny random-weight annotator models, so every model-based source filter runs in the demo stack.

Each is its real architecture with small widths, seeded weights, exported by
:func:`pipelines.models.annotators.export_annotator` (the path real checkpoints take) into
``<models>/filter/<model>/``. The maps they produce are meaningless; the pre- and post-processing
around them is the real thing. All five build in about a second and run at 512² in well under
one on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.imageops.annotators import model_folder
from pipelines.models.annotator_networks import Hed, HedConfig, Mlsd, MlsdConfig, OpenPoseBody, OpenPoseConfig
from pipelines.models.annotators import depth_module, export_annotator, segment_module
from pipelines.models.layout import ONNX_FILE

DEMO_SEED = 20240611
DEMO_HED = HedConfig(widths=(4, 8, 8, 8, 8), depths=(1, 1, 2, 2, 2))
DEMO_MLSD = MlsdConfig(
    stem=8, groups=((1, 8, 1, 1), (2, 8, 1, 2), (2, 8, 1, 2), (2, 16, 1, 2), (2, 16, 1, 1)), decoder=8
)
DEMO_OPENPOSE = OpenPoseConfig(
    backbone=(8, 0, 8, 0, 8, 0, 8), cpm=(8,), first_width=8, first_hidden=16, refine_width=8, stages=2
)


def demo_depth() -> nn.Module:
    """A DPT (ViT, not hybrid) of four tiny layers with the four-level reassemble neck."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=384,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        # At transformers' 0.02 the tiny head's depth is ~1e-8, flat to every Sobel; at 0.2 it
        # spans hundreds to thousands, as MiDaS's relative depth does.
        initializer_range=0.2,
    )
    return depth_module(DPTForDepthEstimation(config))


def demo_segment() -> nn.Module:
    """An UperNet over a four-stage ConvNeXt of one block each, with ADE20K's 150 classes."""
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    # Keyword arguments the configs take through ``PretrainedConfig`` (unknown to their stubs).
    backbone_args: dict[str, Any] = {"out_features": ["stage1", "stage2", "stage3", "stage4"]}
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], **backbone_args)
    head_args: dict[str, Any] = {"num_labels": 150}
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        use_auxiliary_head=False,
        auxiliary_channels=16,
        **head_args,
    )
    return segment_module(UperNetForSemanticSegmentation(config))


#: How each demo model's torch module is made (called under a fixed seed).
DEMO_ANNOTATORS: dict[str, Callable[[], nn.Module]] = {
    "depth": demo_depth,
    "hed": lambda: Hed(DEMO_HED),
    "mlsd": lambda: Mlsd(DEMO_MLSD),
    "openpose": lambda: OpenPoseBody(DEMO_OPENPOSE),
    "segment": demo_segment,
}


def demo_annotator(model: str, seed: int = DEMO_SEED) -> nn.Module:
    """The seeded torch module of one demo annotator, in eval mode (BatchNorm statistics randomised)."""
    torch.manual_seed(seed)
    module = DEMO_ANNOTATORS[model]()
    for layer in module.modules():
        # Fresh BatchNorms normalise nothing; random statistics make the exported graph do real work.
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.running_var.uniform_(0.5, 1.5)
    return module.eval()


def build_demo_annotators(
    models_path: Path, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Export every demo annotator into ``<models>/filter/``; existing ones are kept unless ``force``."""
    paths = []
    for model in DEMO_ANNOTATORS:
        path = model_folder(models_path, model) / ONNX_FILE
        if force or not path.is_file():
            if progress:
                progress(f"filter/{model}: building a random-weight annotator")
            export_annotator(model, demo_annotator(model), models_path)
        paths.append(path)
    return paths

"""Full-size Stable Diffusion 1.5 architectures with random weights, for benchmarks.

Speed does not depend on weight values, and no weights can be downloaded here, so the benchmark
builds SD 1.5's UNet, CLIP ViT-L/14 text encoder and KL VAE from their published configurations
(written out below) with seeded random weights, as a diffusers folder our converter takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.models.demo import (
    BOS_TOKEN,
    EOS_TOKEN,
    MODEL_MAX_LENGTH,
    SD15_SCHEDULER_CONFIG,
    write_demo_checkpoint,
    write_demo_tokenizer,
    write_json,
)

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
#: CLIP ViT-L/14's text tower, as SD 1.5 uses it.
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
ARCHITECTURES = ("sd15", "tiny")


def write_checkpoint(dest: Path, architecture: str) -> None:
    """Write a diffusers folder of ``architecture`` (``sd15``, or ``tiny``: the demo model)."""
    if architecture == "tiny":
        write_demo_checkpoint(dest)
        return
    if architecture != "sd15":
        raise ValueError(f"architecture must be one of {ARCHITECTURES}")
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = write_demo_tokenizer(dest / "tokenizer")
    torch.manual_seed(0)
    ids: dict[str, Any] = {
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }
    modules: dict[str, Any] = {"text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **ids))}
    modules["unet"] = UNet2DConditionModel(**SD15_UNET)
    modules["vae"] = AutoencoderKL(**SD15_VAE)
    for name, module in modules.items():
        module.save_pretrained(dest / name)
    write_json(dest / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
    write_json(
        dest / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )

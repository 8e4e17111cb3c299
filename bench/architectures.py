"""Full-size Stable Diffusion 1.5 and SDXL base architectures with random weights, for benchmarks.

Speed does not depend on weight values, and no weights can be downloaded here, so the benchmark
builds SD 1.5's UNet, CLIP ViT-L/14 text encoder and KL VAE, and SDXL base 1.0's UNet, CLIP ViT-L
and OpenCLIP ViT-bigG text encoders and VAE, from their published configurations (written out
below) with seeded random weights, as diffusers folders our converter takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.models.demo import (
    BOS_TOKEN,
    EOS_TOKEN,
    MODEL_MAX_LENGTH,
    SD15_INDEX_EXTRAS,
    SD15_SCHEDULER_CONFIG,
    SDXL_MODEL_INDEX,
    SDXL_PAD_TOKEN_2,
    SDXL_SCALING_FACTOR,
    SDXL_SCHEDULER_CONFIG,
    sd_model_index,
    write_demo_checkpoint,
    write_demo_sdxl_checkpoint,
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
#: SDXL base 1.0's UNet (2.6 B parameters): no attention at the top level, 2 and 10 transformer
#: layers per block below it, attending to both text encoders' states (768 + 1280).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    # Six size embeddings of 256 and the 1280-wide pooled projection of the second encoder.
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
#: SDXL's VAE: SD's architecture, trained anew, with its own scaling factor.
SDXL_VAE: dict[str, Any] = {**SD15_VAE, "sample_size": 1024, "scaling_factor": SDXL_SCALING_FACTOR}
#: SDXL's first encoder: CLIP ViT-L/14's text tower, as in SD 1.5 (its penultimate states are used).
SDXL_TEXT: dict[str, Any] = SD15_TEXT
#: SDXL's second encoder: OpenCLIP ViT-bigG/14's text tower, with a 1280-wide projection.
SDXL_TEXT_2: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
ARCHITECTURES = ("sd15", "sdxl", "tiny", "tiny-sdxl")


def write_checkpoint(dest: Path, architecture: str) -> None:
    """Write a diffusers folder of ``architecture`` (``sd15``, ``sdxl``, or the demo
    ``tiny``/``tiny-sdxl``)."""
    if architecture == "tiny":
        write_demo_checkpoint(dest)
        return
    if architecture == "tiny-sdxl":
        write_demo_sdxl_checkpoint(dest)
        return
    if architecture == "sdxl":
        write_sdxl_checkpoint(dest)
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
    index = sd_model_index("StableDiffusionPipeline", "PNDMScheduler", **SD15_INDEX_EXTRAS)
    write_json(dest / "model_index.json", index)


def write_sdxl_checkpoint(dest: Path) -> None:
    """Write a full-size SDXL base diffusers folder of seeded random weights to ``dest``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = write_demo_tokenizer(dest / "tokenizer")
    write_demo_tokenizer(dest / "tokenizer_2", pad_token=SDXL_PAD_TOKEN_2)
    torch.manual_seed(0)
    ids: dict[str, Any] = {
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }
    modules: dict[str, Any] = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_TEXT, **ids)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2, **ids)),
        "unet": UNet2DConditionModel(**SDXL_UNET),
        "vae": AutoencoderKL(**SDXL_VAE),
    }
    for name, module in modules.items():
        module.save_pretrained(dest / name)
    write_json(dest / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER_CONFIG)
    write_json(dest / "model_index.json", SDXL_MODEL_INDEX)

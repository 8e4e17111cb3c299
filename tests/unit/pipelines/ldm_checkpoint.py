"""Write diffusers models as one single-file checkpoint in the original LDM (civitai) key layout.

The inverse of the mapping diffusers' single-file loader applies, written from the LDM names
(``input_blocks``, ``middle_block``, ``output_blocks``; ``down.N.block``, ``mid.block_1``; OpenCLIP's
``resblocks`` with fused ``in_proj``), so a round trip through ``pipelines.models.single_file``
can be checked against the very weights that went in. Every key must be mapped: one this module
does not know raises, rather than going missing from the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

#: diffusers' names of a UNet ResNet block's layers, and the LDM ``ResBlock``'s.
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
#: The VAE's mid-block attention: diffusers' linear layers are 1x1 convolutions in LDM.
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def sd1_checkpoint(unet: Any, vae: Any, text_encoder: Any) -> dict[str, torch.Tensor]:
    """An SD 1.x single-file state dict of the diffusers ``unet``, ``vae`` and CLIP ``text_encoder``."""
    return {
        **_prefixed(UNET_PREFIX, ldm_unet(unet.state_dict(), unet.config)),
        **_prefixed(VAE_PREFIX, ldm_vae(vae.state_dict(), vae.config)),
        **_prefixed(SD1_CLIP_PREFIX, ldm_clip(text_encoder.state_dict())),
    }


def sdxl_checkpoint(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> dict[str, torch.Tensor]:
    """An SDXL base single-file state dict: CLIP ``text_encoder`` and OpenCLIP ``text_encoder_2``."""
    return {
        **_prefixed(UNET_PREFIX, ldm_unet(unet.state_dict(), unet.config)),
        **_prefixed(VAE_PREFIX, ldm_vae(vae.state_dict(), vae.config)),
        **_prefixed(SDXL_CLIP_PREFIX, ldm_clip(text_encoder.state_dict())),
        **_prefixed(SDXL_OPEN_CLIP_PREFIX, ldm_open_clip(text_encoder_2.state_dict())),
    }


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value.detach().clone().contiguous() for key, value in state.items()}


def _rename(key: str, renames: Mapping[str, str]) -> str:
    """``key`` with its leading module path replaced by its entry in ``renames``."""
    for old, new in renames.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    return key


def ldm_unet(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in LDM's ``UNetModel`` names.

    Each down block is ``layers_per_block`` input blocks plus one for its down-sampler; each up
    block is one more output block than that, the last also holding the up-sampler (after the
    attention, where the block has one).
    """
    per_block = config["layers_per_block"] + 1
    up_attention = {index for index, kind in enumerate(config["up_block_types"]) if "CrossAttn" in kind}

    def down(match: re.Match[str]) -> str:
        block, layer, part, rest = int(match[1]), int(match[3]), match[2], match[4]
        index = 1 + block * per_block + layer
        if part == "resnets":
            return f"input_blocks.{index}.0.{_rename(rest, UNET_RESNET)}"
        return f"input_blocks.{index}.1.{rest}"

    def up(match: re.Match[str]) -> str:
        block, layer, part, rest = int(match[1]), int(match[3]), match[2], match[4]
        index = block * per_block + layer
        if part == "resnets":
            return f"output_blocks.{index}.0.{_rename(rest, UNET_RESNET)}"
        return f"output_blocks.{index}.1.{rest}"

    def upsampler(match: re.Match[str]) -> str:
        block = int(match[1])
        slot = 2 if block in up_attention else 1
        return f"output_blocks.{block * per_block + per_block - 1}.{slot}.conv.{match[2]}"

    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", down),
        (
            r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
            lambda m: f"input_blocks.{(int(m[1]) + 1) * per_block}.0.op.{m[2]}",
        ),
        (
            r"mid_block\.resnets\.(\d+)\.(.+)",
            lambda m: f"middle_block.{2 * int(m[1])}.{_rename(m[2], UNET_RESNET)}",
        ),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
        (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", up),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", upsampler),
        (r"(.+)", lambda m: _renamed_or_fail(m[1], UNET_FIXED)),
    ]
    return {_apply(rules, key): value for key, value in state.items()}


def ldm_vae(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in LDM's ``AutoencoderKL`` names and shapes.

    LDM numbers the decoder's up blocks from the lowest resolution's end, diffusers from the top.
    """
    last_up = len(config["up_block_types"]) - 1

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (
            r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}",
        ),
        (
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)",
            lambda m: f"encoder.down.{m[1]}.downsample.{m[2]}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda m: f"decoder.up.{last_up - int(m[1])}.block.{m[2]}.{resnet(m[3])}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
            lambda m: f"decoder.up.{last_up - int(m[1])}.upsample.{m[2]}",
        ),
        (
            r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)",
            lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}",
        ),
        (
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)",
            lambda m: f"{m[1]}.mid.attn_1.{_renamed_or_fail(m[2], VAE_ATTENTION)}",
        ),
        (r"(encoder|decoder)\.conv_norm_out\.(.+)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"((?:encoder|decoder)\.conv_(?:in|out)|quant_conv|post_quant_conv)\.(.+)", lambda m: m[0]),
    ]
    converted = {}
    for key, value in state.items():
        ldm_key = _apply(rules, key)
        is_projection = re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key)
        converted[ldm_key] = value[:, :, None, None] if is_projection else value
    return converted


def ldm_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict as SD 1.x and SDXL store it (under ``text_model.``)."""
    return {"text_model." + key.removeprefix("text_model."): value for key, value in state.items()}


def ldm_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` state dict in OpenCLIP's names.

    OpenCLIP's attention has one fused input projection (query, key, value stacked) and applies its
    text projection as ``x @ text_projection``: the transpose of the linear layer's weight.
    """
    converted: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    for key, value in state.items():
        layer = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
        attention = layer and re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", layer[2])
        if key == "text_projection.weight":
            converted["text_projection"] = value.T
        elif key in fixed:
            converted[fixed[key]] = value
        elif layer and attention:
            fused.setdefault(f"transformer.resblocks.{layer[1]}.attn.in_proj_{attention[2]}", {})[
                attention[1]
            ] = value
        elif layer:
            name = _renamed_or_fail(layer[2], OPEN_CLIP_LAYER)
            converted[f"transformer.resblocks.{layer[1]}.{name}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for {key}")
    for key, parts in fused.items():
        converted[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return converted


def _apply(rules: list[tuple[str, Callable[[re.Match[str]], str]]], key: str) -> str:
    """``key`` renamed by the first rule whose pattern matches all of it."""
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    raise KeyError(f"no LDM name for {key}")


def _renamed_or_fail(key: str, renames: Mapping[str, str]) -> str:
    renamed = _rename(key, renames)
    if renamed == key:
        raise KeyError(f"no LDM name for {key}")
    return renamed

"""Export a GPT-2 causal language model (``transformers.GPT2LMHeadModel``) to ONNX with past key/values.

The folder a text model is converted into::

    <dest>/model.onnx       input_ids, position_ids, past_key_values.<i>.key/value (one pair per layer)
                            -> logits, present.<i>.key/value
    <dest>/config.json      the GPT-2 config (context length, end-of-text token)
    <dest>/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    <dest>/hash.txt         first line: short upper-case SHA-256 of the graph

Past and present tensors are ``[batch, heads, positions, head size]``; the first call passes
past tensors with 0 positions, each later call one new token and the previous call's presents, so
generating N tokens costs N small steps rather than N passes over a growing sequence.

The graph is traced (``export_module``, the exporter every model here takes) from our own forward
over the model's modules (embeddings, blocks, final norm, head) rather than from
``GPT2LMHeadModel.forward``: transformers' cache and mask helpers change between releases and
trace their shapes as constants, which made a graph that was only right at the traced lengths.
Attention here is written once, with the causal mask taken from ``position_ids`` (query at
absolute position p sees keys 0..p), so any prompt length and any past length run. The same code
converts a real checkpoint (``AUTOMATIC/promptgen-lexart``,
``Gustavosta/MagicPrompt-Stable-Diffusion``; ``onnx-web convert text SRC NAME``) and the demo model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from pipelines.models.convert import export_module
from pipelines.models.layout import HASH_FILE, ONNX_FILE, hash_component

DEFAULT_OPSET = 17
#: The sub-folder of the models folder that holds text models (the registry's ``text`` kind).
TEXT_FOLDER = "text"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
#: Trace sizes: a past and a new sequence of more than one position, so no length is special.
TRACE_PAST = 2
TRACE_SEQUENCE = 3


def past_names(layers: int) -> list[str]:
    """The past inputs of a graph with ``layers`` blocks, in graph order."""
    return [f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def present_names(layers: int) -> list[str]:
    """The present outputs, in the same order as ``past_names``."""
    return [f"present.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def decoder_module(model: Any) -> Any:
    """A module computing one decoding call of ``model`` (a ``GPT2LMHeadModel`` in eval mode).

    ``forward(input_ids, position_ids, *past)`` returns ``(logits, *presents)``.
    """
    import torch

    config = model.config
    heads = int(config.n_head)
    width = int(config.n_embd)
    head_size = width // heads

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = model.transformer
            self.lm_head = model.lm_head

        def split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
            batch, length = tensor.shape[0], tensor.shape[1]
            return tensor.reshape(batch, length, heads, head_size).transpose(1, 2)

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor) -> Any:
            blocks = self.transformer.h
            hidden = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)
            presents: list[torch.Tensor] = []
            for index, block in enumerate(blocks):
                query, key, value = block.attn.c_attn(block.ln_1(hidden)).split(width, dim=2)
                query, key, value = self.split_heads(query), self.split_heads(key), self.split_heads(value)
                key = torch.cat([past[2 * index], key], dim=2)
                value = torch.cat([past[2 * index + 1], value], dim=2)
                presents += [key, value]
                attended = self.attend(query, key, value, position_ids, index)
                batch, length = hidden.shape[0], hidden.shape[1]
                merged = attended.transpose(1, 2).reshape(batch, length, width)
                hidden = hidden + block.attn.c_proj(merged)
                hidden = hidden + block.mlp(block.ln_2(hidden))
            logits = self.lm_head(self.transformer.ln_f(hidden))
            return (logits, *presents)

        def attend(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            position_ids: torch.Tensor,
            index: int,
        ) -> torch.Tensor:
            scale = 1.0
            if config.scale_attn_weights:
                scale /= math.sqrt(head_size)
            if config.scale_attn_by_inverse_layer_idx:
                scale /= index + 1
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
            key_positions = torch.cumsum(torch.ones_like(key[0, 0, :, 0], dtype=torch.int64), 0) - 1
            visible = key_positions[None, None, None, :] <= position_ids[:, None, :, None]
            scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1).to(value.dtype)
            return torch.matmul(weights, value)

    return Decoder().eval()


def export_gpt2(model: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` (a ``GPT2LMHeadModel``) to ``path`` with past key/values."""
    import torch

    config = model.config
    layers, heads = int(config.n_layer), int(config.n_head)
    head_size = int(config.n_embd) // heads
    past = [torch.zeros(1, heads, TRACE_PAST, head_size) for _ in range(2 * layers)]
    input_ids = torch.ones(1, TRACE_SEQUENCE, dtype=torch.int64)
    position_ids = torch.arange(TRACE_PAST, TRACE_PAST + TRACE_SEQUENCE, dtype=torch.int64)[None]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
        **{name: {0: "batch", 2: "past"} for name in past_names(layers)},
        **{name: {0: "batch", 2: "total"} for name in present_names(layers)},
    }
    inputs = {name: axes.get(name, {}) for name in ["input_ids", "position_ids", *past_names(layers)]}
    outputs = {name: axes[name] for name in ["logits", *present_names(layers)]}
    export_module(
        decoder_module(model), (input_ids, position_ids, *past), path, opset, inputs=inputs, outputs=outputs
    )


def convert_gpt2_folder(source: Path, dest: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Convert a transformers GPT-2 folder (weights, config, tokenizer) into ``dest``'s layout.

    Written beside ``dest`` and moved into place at the end, so a half-converted folder is never
    listed as a model.
    """
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(source).eval()
    partial = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    export_gpt2(model, partial / ONNX_FILE, opset)
    model.config.to_json_file(partial / CONFIG_FILE)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, partial / name)
    missing = [name for name in TOKENIZER_FILES[:2] if not (partial / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} has no GPT-2 tokenizer: {', '.join(missing)} missing")
    (partial / HASH_FILE).write_text(hash_component(partial) + "\n", encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def read_config(folder: Path) -> dict[str, Any]:
    """The GPT-2 config a converted folder carries."""
    config: dict[str, Any] = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    return config

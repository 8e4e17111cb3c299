"""Prompt syntax handled in the worker (contract §9): network tokens, stages, long prompts.

- ``<lora:NAME:W>``, ``<inversion:NAME:W>``, ``<embeddings:NAME:W>`` and ``<clip:skip:N>`` are
  removed from the text before encoding and recorded, so metadata can list the networks.
- ``a || b`` splits a prompt into stages: the base generation uses part 0, highres pass *i*
  part *i + 1*.
- Prompts longer than one CLIP window (75 tokens plus bos and eos) are split into 77-token
  windows that are encoded separately and concatenated along the sequence axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A number as onnx-web's token weights are written: ``1``, ``0.5``, ``-.3``.
_WEIGHT = r"(-?(?:\d+(?:\.\d*)?|\.\d+))"
LORA_TOKEN = re.compile(r"<lora:([^:>]+):" + _WEIGHT + ">")
INVERSION_TOKEN = re.compile(r"<(?:inversion|embeddings):([^:>]+):" + _WEIGHT + ">")
CLIP_SKIP_TOKEN = re.compile(r"<clip:skip:(\d+)>")
STAGE_SEPARATOR = "||"


@dataclass(frozen=True)
class Network:
    """A LoRA or textual inversion named by a prompt token."""

    name: str
    weight: float


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt with its tokens removed, and what the tokens asked for."""

    text: str
    loras: list[Network] = field(default_factory=list)
    inversions: list[Network] = field(default_factory=list)
    #: CLIP layers to skip (the first ``<clip:skip:N>`` wins); 0 when none.
    clip_skip: int = 0


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Strip onnx-web's network and CLIP tokens from ``prompt`` and record them."""
    loras = [Network(name, float(weight)) for name, weight in LORA_TOKEN.findall(prompt)]
    inversions = [Network(name, float(weight)) for name, weight in INVERSION_TOKEN.findall(prompt)]
    skips = CLIP_SKIP_TOKEN.findall(prompt)
    text = CLIP_SKIP_TOKEN.sub("", INVERSION_TOKEN.sub("", LORA_TOKEN.sub("", prompt)))
    return ParsedPrompt(text, loras, inversions, int(skips[0]) if skips else 0)


def prompt_stage(prompt: str, index: int) -> str:
    """Part ``index`` of a ``first || second || ...`` prompt, the last part for larger indexes."""
    parts = prompt.split(STAGE_SEPARATOR)
    return parts[min(max(index, 0), len(parts) - 1)].strip()


def token_windows(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of ``text`` as CLIP windows, shape ``(windows, model_max_length)``.

    A prompt that fits one window is tokenized exactly as diffusers does (``max_length``
    padding with the tokenizer's pad token), so short prompts give diffusers' embeddings. A
    longer one is cut into chunks of ``model_max_length - 2`` tokens, each wrapped in bos/eos and
    padded, instead of being truncated.
    """
    length = tokenizer.model_max_length
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    if len(ids) <= length - 2:
        single = tokenizer(
            text, padding="max_length", max_length=length, truncation=True, return_tensors="np"
        )
        return np.asarray(single.input_ids, dtype=np.int64)
    chunk = length - 2
    windows = []
    for start in range(0, len(ids), chunk):
        body = [tokenizer.bos_token_id, *ids[start : start + chunk], tokenizer.eos_token_id]
        windows.append(body + [tokenizer.pad_token_id] * (length - len(body)))
    return np.asarray(windows, dtype=np.int64)


def pad_windows(tokenizer: Any, windows: np.ndarray, count: int) -> np.ndarray:
    """``windows`` followed by empty-prompt windows up to ``count`` windows in all.

    The prompt and negative prompt must give embeddings of the same length to be batched
    through the UNet together; an empty window is what the shorter one would say anyway.
    """
    if len(windows) >= count:
        return windows
    empty = token_windows(tokenizer, "")
    return np.concatenate([windows, np.repeat(empty, count - len(windows), axis=0)])

"""Prompt syntax handled in the worker (contract §9): parsing, stages, long and weighted prompts.

- ``prompt_grammar`` parses a prompt stage once into typed values: weighted text spans, the
  ``<lora:..>``, ``<inversion:..>``/``<embeddings:..>``, ``<clip:skip:N>``, ``<region:..>`` and
  ``<reseed:..>`` tokens (removed from the text and recorded), layer ranges expanded.
- ``a || b`` splits a prompt into stages: the base generation uses part 0, highres pass *i*
  part *i + 1*.
- ``(a|b|c)`` groups make alternative prompts that the txt2img, img2img and inpaint pipelines
  take in turn, one per UNet call (``expand_alternatives``); elsewhere they are text.
- Prompts longer than one CLIP window (75 tokens plus bos and eos) are split into 77-token
  windows that are encoded separately and concatenated along the sequence axis.
- Weights are applied as diffusers' long prompt weighting (onnx-web's ``lpw``) does: each
  token's embedding times its weight, then the whole rescaled to the unweighted mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.diffusion.prompt_grammar import (
    STAGE_SEPARATOR,
    Network,
    ParsedPrompt,
    PromptSyntaxError,
    Region,
    Reseed,
    Span,
    parse_prompt,
    parse_stages,
)

__all__ = [
    "Network",
    "ParsedPrompt",
    "PromptSyntaxError",
    "PromptText",
    "Region",
    "Reseed",
    "Span",
    "TokenWindows",
    "check_alternatives",
    "expand_alternatives",
    "pad_windows",
    "parse_prompt",
    "parse_stages",
    "prompt_stage",
    "prompt_windows",
    "token_windows",
    "weight_embeddings",
]

#: Means smaller than this share of the embeddings' mean magnitude are not rescaled to.
MEAN_FLOOR = 1e-4
#: What an encoder takes: plain text (weight 1 throughout) or a parsed prompt's spans.
PromptText = str | Sequence[Span]


#: An alternatives group: ``(a|b|c)``, innermost parentheses holding a ``|`` (onnx-web's, contract §9.3).
ALTERNATIVES = re.compile(r"(?<!\\)\(([^()]*?(?<!\\)\|[^()]*)(?<!\\)\)")
#: The most prompts a prompt's alternatives make: one per UNet call at most, so a few dozen.
MAX_ALTERNATIVES = 64
#: The pipelines whose prompts' ``(a|b)`` groups cycle per UNet call (contract §9.3: not LPW, SDXL
#: or panorama, where the group is text).
ALTERNATIVE_PIPELINES = frozenset({"txt2img", "img2img", "inpaint"})


def expand_alternatives(prompt: str) -> list[str]:
    """The prompts ``(a|b|c)`` groups make, one per UNet call in turn, as onnx-web cycles them.

    Prompt *i* takes option ``i % n`` of every group of ``n`` options; there are as many prompts as
    the largest group has options. A prompt without groups is itself. Parentheses without ``|``
    stay weights (``(word:1.2)``), unlike onnx-web's plain pipelines, which drop them.
    """
    groups: list[list[str]] = []
    end = 0
    for match in ALTERNATIVES.finditer(prompt):
        groups.append([prompt[end : match.start()]])
        groups.append(match.group(1).split("|"))
        end = match.end()
    groups.append([prompt[end:]])
    count = min(max(len(group) for group in groups), MAX_ALTERNATIVES)
    return ["".join(group[index % len(group)] for group in groups) for index in range(count)]


def check_alternatives(prompt: str) -> None:
    """Parse every prompt ``prompt``'s ``(a|b)`` groups make (each ``||`` stage's); raises
    ``PromptSyntaxError`` for the first that does not parse (a group that splits ``[red|blue]``)."""
    for part in prompt.split(STAGE_SEPARATOR):
        alternatives = expand_alternatives(part)
        for alternative in alternatives if len(alternatives) > 1 else ():
            try:
                parse_prompt(alternative)
            except PromptSyntaxError as err:
                raise PromptSyntaxError(
                    err.position, f"the alternative {alternative[:80]!r} of an (a|b) group: {err.rule}"
                ) from err


def prompt_stage(prompt: str, index: int) -> str:
    """Part ``index`` of a ``first || second || ...`` prompt, the last part for larger indexes."""
    parts = prompt.split(STAGE_SEPARATOR)
    return parts[min(max(index, 0), len(parts) - 1)].strip()


@dataclass(frozen=True)
class TokenWindows:
    """A prompt's token ids in CLIP windows and each token's weight, both ``(windows, length)``."""

    ids: np.ndarray
    #: 1 for bos, eos and padding, the span's weight for its tokens.
    weights: np.ndarray

    def padded(self, tokenizer: Any, count: int) -> TokenWindows:
        """These windows followed by empty-prompt windows (weight 1) up to ``count`` in all."""
        ids = pad_windows(tokenizer, self.ids, count)
        weights = np.ones(ids.shape, dtype=np.float32)
        weights[: len(self.weights)] = self.weights
        return TokenWindows(ids, weights)


def prompt_windows(tokenizer: Any, prompt: PromptText, *, truncate: bool = False) -> TokenWindows:
    """Token ids and weights of ``prompt`` in CLIP windows of ``tokenizer.model_max_length``.

    Spans are tokenized one by one, as lpw does, so a weight covers exactly its span's tokens;
    a prompt without weights is one span, tokenized whole as diffusers does. A prompt that fits
    one window is one window as diffusers pads it; a longer one is cut into chunks of
    ``model_max_length - 2`` tokens, each wrapped in bos/eos and padded, or, with ``truncate``,
    cut to its first window (SDXL, as diffusers' pipeline does).
    """
    spans = [Span(prompt)] if isinstance(prompt, str) else list(prompt)
    ids: list[int] = []
    weights: list[float] = []
    for span in spans:
        tokens = tokenizer(span.text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids.extend(tokens)
        weights.extend([span.weight] * len(tokens))
    length = tokenizer.model_max_length
    chunk = length - 2
    if truncate:
        ids, weights = ids[:chunk], weights[:chunk]
    id_windows, weight_windows = [], []
    for start in range(0, max(len(ids), 1), chunk):
        body = [tokenizer.bos_token_id, *ids[start : start + chunk], tokenizer.eos_token_id]
        id_windows.append(body + [tokenizer.pad_token_id] * (length - len(body)))
        weight_windows.append([1.0, *weights[start : start + chunk], *[1.0] * (length - len(body) + 1)])
    return TokenWindows(np.asarray(id_windows, dtype=np.int64), np.asarray(weight_windows, dtype=np.float32))


def token_windows(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of unweighted ``text`` as CLIP windows, shape ``(windows, model_max_length)``."""
    return prompt_windows(tokenizer, text).ids


def pad_windows(tokenizer: Any, windows: np.ndarray, count: int) -> np.ndarray:
    """``windows`` followed by empty-prompt windows up to ``count`` windows in all.

    The prompt and negative prompt must give embeddings of the same length to be batched
    through the UNet together; an empty window is what the shorter one would say anyway.
    """
    if len(windows) >= count:
        return windows
    empty = token_windows(tokenizer, "")
    return np.concatenate([windows, np.repeat(empty, count - len(windows), axis=0)])


def weight_embeddings(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """lpw's weighting: ``(1, tokens, hidden)`` embeddings times their tokens' weights, mean kept.

    Each token's embedding is multiplied by its weight, then the whole is rescaled so its mean
    equals the unweighted mean. Embeddings with every weight 1 come back unchanged.
    """
    if np.all(weights == 1.0):
        return embeddings
    previous = embeddings.mean(dtype=np.float64)
    weighted = embeddings * weights.reshape(1, -1, 1).astype(embeddings.dtype)
    mean = weighted.mean(dtype=np.float64)
    # A mean near zero next to the values' size is rounding noise (a final LayerNorm without
    # bias centres every token), and a ratio of two noises would scale by anything, sign included.
    floor = MEAN_FLOOR * np.abs(weighted).mean(dtype=np.float64)
    scale = previous / mean if min(abs(previous), abs(mean)) > floor else 1.0
    result: np.ndarray = (weighted * scale).astype(embeddings.dtype)
    return result

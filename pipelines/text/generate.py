"""Text generation with a converted GPT-2 (``pipelines.text.convert``): the sampling loop.

Each token is one call of the graph with the new token and the previous call's key/values, so a
prompt of P tokens and N new tokens cost one call over P positions and N calls over one. Choosing
the next token follows the order transformers' ``generate`` applies its warpers in: temperature,
then top-k, then top-p (nucleus), then a draw from the softmax. A temperature of 0 is greedy (the
most likely token; ties go to the lowest id, as ``argmax``). Draws come from a numpy generator
seeded with the job's seed, so a seed always gives the same text on the same model.

Generation stops at the model's end-of-text token (which is not part of the text), after
``max_new_tokens``, or at the model's context length; a prompt too long to leave room for
``max_new_tokens`` keeps its last tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.context import SessionProvider
from pipelines.models.layout import ONNX_FILE
from pipelines.text.convert import read_config


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen, and how many may be generated."""

    max_new_tokens: int
    #: 0 is greedy; above 1 flattens the distribution, below 1 sharpens it.
    temperature: float = 1.0
    #: Keep only the ``top_k`` most likely tokens (0 keeps all).
    top_k: int = 0
    #: Keep the most likely tokens whose probabilities sum to ``top_p`` (1 keeps all).
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Generated:
    """One generation: the new token ids, their text, and why it stopped."""

    prompt_ids: list[int]
    new_ids: list[int]
    #: The text of ``new_ids`` alone (the prompt is not repeated).
    text: str
    #: ``eos`` (the model ended the text), ``length`` (``max_new_tokens``) or ``context``.
    stop: str


def top_k_filter(logits: np.ndarray, top_k: int) -> np.ndarray:
    """``logits`` with every token below the ``top_k``-th largest set to -inf (ties are kept)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -top_k, axis=-1)[..., -top_k, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, top_p: float) -> np.ndarray:
    """``logits`` with the least likely tokens set to -inf, keeping the smallest set whose
    probability reaches ``top_p`` (at least one token).

    In ascending order of likelihood, a token is dropped while the mass up to and including it is
    at most ``1 - top_p``: the tokens more likely than it already reach ``top_p``.
    """
    if top_p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1, kind="stable")
    ascending = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(softmax(ascending), axis=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """The softmax over the last axis, in float32 (``-inf`` gives 0)."""
    shifted = logits.astype(np.float32) - np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return np.asarray(weights / np.sum(weights, axis=-1, keepdims=True), np.float32)


def next_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token id from one position's logits (``[vocab]``)."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float32) / np.float32(sampling.temperature)
    scores = top_p_filter(top_k_filter(scores, sampling.top_k), sampling.top_p)
    probabilities = softmax(scores).astype(np.float64)
    cumulative = np.cumsum(probabilities)
    draw = rng.random() * cumulative[-1]
    # The first token whose cumulative mass passes the draw, never one with no mass.
    return int(min(np.searchsorted(cumulative, draw, side="right"), np.flatnonzero(probabilities)[-1]))


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str, modified: float) -> Any:
    """GPT-2's byte-level BPE tokenizer of a converted folder (cached per folder and version)."""
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(folder)


class TextModel:
    """A converted GPT-2 folder: its tokenizer, its graph's session and its limits."""

    def __init__(self, folder: Path, sessions: SessionProvider) -> None:
        self.folder = folder
        config = read_config(folder)
        self.context = int(config.get("n_positions") or config.get("n_ctx") or 1024)
        self.eos_token_id = int(config["eos_token_id"])
        self.session = sessions.get(folder / ONNX_FILE)
        self.tokenizer = _tokenizer(str(folder), (folder / "vocab.json").stat().st_mtime)
        self.past_inputs = [
            item for item in self.session.get_inputs() if item.name.startswith("past_key_values.")
        ]
        self.present_outputs = [
            item.name for item in self.session.get_outputs() if item.name.startswith("present.")
        ]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, without NUL characters: a byte-level model can make them, and
        Postgres, which stores the text in the job's metadata, cannot hold them."""
        return str(self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)).replace("\x00", "")

    def empty_past(self) -> dict[str, np.ndarray]:
        """Past tensors of no positions: the first call's."""
        return {
            item.name: np.zeros((1, int(item.shape[1]), 0, int(item.shape[3])), np.float32)
            for item in self.past_inputs
        }

    def step(
        self, ids: list[int], start: int, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits of the last of ``ids`` (at positions ``start``…) and the key/values to pass next."""
        feeds = {
            "input_ids": np.asarray([ids], np.int64),
            "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None],
            **past,
        }
        logits, *presents = self.session.run(["logits", *self.present_outputs], feeds)
        names = [item.name for item in self.past_inputs]
        return logits[0, -1], dict(zip(names, presents, strict=True))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits of every position of ``ids`` in one call (for tests and scoring)."""
        feeds = {
            "input_ids": np.asarray([ids], np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            **self.empty_past(),
        }
        (logits,) = self.session.run(["logits"], feeds)
        return np.asarray(logits[0])

    def generate(
        self,
        prompt: str,
        sampling: Sampling,
        *,
        on_token: Callable[[], None] = lambda: None,
        check_cancelled: Callable[[], None] = lambda: None,
    ) -> Generated:
        """Continue ``prompt``; ``on_token`` is called after each new token, ``check_cancelled`` before."""
        room = max(self.context - sampling.max_new_tokens, 1)
        prompt_ids = self.encode(prompt)[-room:] or [self.eos_token_id]
        rng = np.random.default_rng(sampling.seed)
        new_ids: list[int] = []
        feed, position, past = prompt_ids, 0, self.empty_past()
        stop = "length"
        for _ in range(sampling.max_new_tokens):
            if position + len(feed) > self.context:
                stop = "context"
                break
            check_cancelled()
            logits, past = self.step(feed, position, past)
            position += len(feed)
            token = next_token(logits, sampling, rng)
            on_token()
            if token == self.eos_token_id:
                stop = "eos"
                break
            new_ids.append(token)
            feed = [token]
        return Generated(prompt_ids, new_ids, self.decode(new_ids), stop)

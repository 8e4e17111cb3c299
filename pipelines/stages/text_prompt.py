"""``text-prompt``: lengthen the prompt with a GPT-2 text model (a "promptgen" model), for the
stages after it.

Params (onnx-web's): ``prompt_filter``, the text model (resolved by the api to its path below the
models folder); ``min_length`` (default 80): each ``||`` part of the prompt shorter than this many
characters is continued by the model, up to ``RETRIES`` times, until it is long enough;
``remove_tokens``, a regular expression removed from each continued part (the model's text never
brings the prompt grammar's brackets, pipes or backslashes: they are taken out); ``add_suffix``, appended
to each part after ``", "``. Plus the sampling parameters of ``text-generate`` (``max_tokens``
new tokens per attempt) and the chain's ``seed`` (attempt k of part i draws from ``seed + 1000i + k``,
so a seed always gives the same prompt).

The new prompt goes to the later stages that use the prompt it expanded (those that inherit it from
the chain's ``defaults``), through ``StageContext.carry``: their ``params.prompt`` (and so their
images' metadata) is the expanded prompt, ``input_prompt`` stays as sent. A later stage that sets a
prompt of its own (a grid's cells) keeps it. Images pass through unchanged. One step of progress per
generated token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from pipelines.context import StageContext, StageImage
from pipelines.stages.spec import StageType, integer, text
from pipelines.stages.text_generate import SAMPLING, load_text_model, sampling

log = logging.getLogger(__name__)

#: Attempts per part: a model may end its text (end-of-text token) before the part is long enough.
RETRIES = 5
PART_SEPARATOR = "||"
#: Seeds of different parts lie this far apart, so parts never share a draw.
PART_SEED_STRIDE = 1000
#: The prompt grammar's characters, taken out of what the model writes: its text continues the
#: prompt as words, never as a weight, token or group the later stages would have to parse.
PROMPT_SYNTAX = str.maketrans("", "", "()[]<>{}|\\")


def expand_prompt(prompt: str, params: dict[str, Any], generate: Any) -> str:
    """Continue each ``||`` part shorter than ``min_length``; ``generate(text, seed)`` continues one."""
    min_length = int(params["min_length"])
    remove = str(params["remove_tokens"])
    suffix = str(params["add_suffix"])
    seed = int(params.get("seed", 0))
    parts = []
    for index, part in enumerate(item.strip() for item in prompt.split(PART_SEPARATOR)):
        for attempt in range(RETRIES):
            if len(part) >= min_length:
                break
            made = generate(part, seed + PART_SEED_STRIDE * index + attempt).translate(PROMPT_SYNTAX)
            part = (part + made).strip()
            if remove:
                part = re.sub(remove, "", part).strip()
        if len(part) < min_length:
            log.debug("prompt part still short after retries", extra={"part": index, "length": len(part)})
        parts.append(f"{part}, {suffix}" if suffix else part)
    return f" {PART_SEPARATOR} ".join(parts)


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Expand the prompt and hand it to the later stages; images pass through."""
    model = load_text_model(ctx, str(params["prompt_filter"]))
    base = sampling(params, 0)

    def generate(part: str, seed: int) -> str:
        result = model.generate(
            part,
            replace(base, seed=seed),
            on_token=lambda: ctx.on_step(1),
            check_cancelled=ctx.check_cancelled,
        )
        return str(result.text)

    prompt = str(params.get("prompt", ""))
    expanded = expand_prompt(prompt, params, generate)
    swaps = ctx.carry.setdefault("prompt", {})
    # A text-prompt after another lengthens what the first made: stages that use the prompt the
    # first was given get the longest one.
    for original, made in swaps.items():
        if made == prompt:
            swaps[original] = expanded
    swaps[prompt] = expanded
    return images


STAGE = StageType(
    "text-prompt",
    run,
    (
        text("prompt_filter", 1000, required=True),
        integer("min_length", 1, 1000, 80),
        text("remove_tokens", 1000, ""),
        text("add_suffix", 1000, ""),
        *SAMPLING,
    ),
    steps=lambda params: int(params["max_tokens"]) * len(str(params.get("prompt", "")).split(PART_SEPARATOR)),
)

"""onnx-web's prompt language (contract §9), parsed once into typed values.

The grammar, by a hand-written recursive descent over the characters::

    prompt   := item*
    item     := "(" item* [":" weight] ")"   weight x1.1, or the explicit weight
              | "[" item* "]"                weight /1.1
              | "<" kind ":" fields ">"      lora, inversion, embeddings, clip, region, reseed
              | name "-{" int "," int ["," int] "}"   textual-inversion layer range
              | "\\" one of \\ ( ) [ ] : < {     that character, literally
              | any other character

Nested groups multiply their weights (``((a))`` is 1.21). A ``:`` inside parentheses starts the
explicit weight; elsewhere it is text. A ``<`` is a token only when a known kind and ``:`` follow,
so ``2 < 3`` stays text. Mistakes raise ``PromptSyntaxError`` with the character position.
``||`` stage separators are split off by the caller (``parse_stages`` checks every stage).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

#: ``(word)`` multiplies the weight of ``word`` by this; ``[word]`` divides by it (lpw's values).
ATTENTION = 1.1
#: The largest explicit ``(text:weight)`` either side of zero: a text embedding times more than
#: this leaves fp16's range on the way through the UNet (1e308 made an all-black image).
MAX_WEIGHT = 100.0
#: The largest LoRA or inversion weight either side of zero; blended into the model's weights, a
#: larger one overflows them the same way.
MAX_NETWORK_WEIGHT = 10.0
#: Deeper bracket nesting is refused: nobody writes it, and it would exhaust the parser's stack.
MAX_DEPTH = 32
#: Most layer tokens one ``name-{start,stop,step}`` range may expand to.
MAX_RANGE = 256
#: Seeds as the api takes them; ``-1`` asks for one derived from the image seed.
SEED_LIMIT = 2**32
STAGE_SEPARATOR = "||"
#: How many prompts' parses ``parse_stages`` keeps: a few requests' prompts and negative prompts.
PARSED_CACHE = 64
#: Region and reseed rectangles lie on the VAE's grid of 8-pixel blocks.
AREA_GRID = 8
#: The most of a region's side its feathered edges blend in.
MAX_FEATHER = 0.5
ALL_EDGES = "TLBR"
#: Characters a backslash makes literal.
ESCAPABLE = frozenset("\\()[]:<{")
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
INTEGER = re.compile(r"\d{1,9}")
SEED = re.compile(r"-?\d{1,10}")
FEATHER = re.compile(r"(?P<value>" + NUMBER.pattern + r")(?:_(?P<edges>[TLBR]+))?")
TOKEN_START = re.compile(r"<(lora|inversion|embeddings|clip|region|reseed):")
RANGE = re.compile(r"([A-Za-z0-9_][\w.-]*?)-\{(\d{1,9}),(\d{1,9})(?:,(\d{1,9}))?\}")
OPENERS = {")": "(", "]": "["}


class PromptSyntaxError(ValueError):
    """A prompt that does not follow the grammar: where (0-based character) and which rule."""

    def __init__(self, position: int, rule: str) -> None:
        self.position = position
        self.rule = rule
        super().__init__(f"{rule} at character {position}")


@dataclass(frozen=True)
class Span:
    """A run of prompt text and the weight its tokens' embeddings get."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Network:
    """A LoRA or textual inversion named by a prompt token."""

    name: str
    weight: float


@dataclass(frozen=True)
class Region:
    """A ``<region:top:left:bottom:right:strength:feather[_TLBR]:prompt>`` token (panorama only)."""

    top: int
    left: int
    bottom: int
    right: int
    strength: float
    #: Share of the rectangle blended in from each feathered edge.
    feather: float
    #: The feathered edges, among ``T``, ``L``, ``B`` and ``R``; all four unless the token says.
    edges: str
    #: The region's own prompt, without the trailing ``+``.
    prompt: str
    #: A trailing ``+``: the base prompt follows the region's.
    append_base: bool


@dataclass(frozen=True)
class Reseed:
    """A ``<reseed:top:left:bottom:right:seed>`` token; ``seed`` -1 derives one from the image seed."""

    top: int
    left: int
    bottom: int
    right: int
    seed: int


@dataclass(frozen=True)
class ParsedPrompt:
    """One prompt stage: weighted text, and what its tokens asked for."""

    #: The text to encode, tokens removed, adjacent runs of equal weight merged (as lpw does).
    spans: list[Span] = field(default_factory=list)
    loras: list[Network] = field(default_factory=list)
    inversions: list[Network] = field(default_factory=list)
    #: CLIP layers to skip (the first ``<clip:skip:N>`` wins); 0 when none.
    clip_skip: int = 0
    regions: list[Region] = field(default_factory=list)
    reseeds: list[Reseed] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text to encode without its weights."""
        return "".join(span.text for span in self.spans)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse one prompt stage; raises ``PromptSyntaxError`` naming the first mistake."""
    return _Parser(prompt, 0).parse()


def check_areas(parsed: ParsedPrompt, width: int, height: int) -> None:
    """Refuse region and reseed rectangles that do not fit a ``width`` x ``height`` image.

    Rectangles are in pixels on the VAE's 8-pixel grid, top-left included and bottom-right
    excluded; a region's strength is at least 0 and its feather at most ``MAX_FEATHER``. Raises
    ``ValueError`` naming the token; the api checks this at submit, the pipelines again.
    """
    areas: list[tuple[str, Region | Reseed]] = [
        (f"region {region.prompt!r}", region) for region in parsed.regions
    ]
    areas += [(f"reseed {reseed.seed}", reseed) for reseed in parsed.reseeds]
    for token, area in areas:
        edges = (area.top, area.left, area.bottom, area.right)
        if any(edge % AREA_GRID for edge in edges):
            raise ValueError(f"{token}: top, left, bottom and right must be multiples of 8, got {edges}")
        if area.bottom <= area.top or area.right <= area.left:
            raise ValueError(f"{token}: bottom and right must be greater than top and left, got {edges}")
        if area.bottom > height or area.right > width:
            raise ValueError(f"{token}: the rectangle {edges} is outside the {width}x{height} image")
    for region in parsed.regions:
        token = f"region {region.prompt!r}"
        if region.strength < 0:
            raise ValueError(f"{token}: strength must be >= 0, got {region.strength:g}")
        if not 0 <= region.feather <= MAX_FEATHER:
            raise ValueError(f"{token}: feather must be from 0 to {MAX_FEATHER}, got {region.feather:g}")


@lru_cache(maxsize=PARSED_CACHE)
def parse_stages(prompt: str) -> tuple[ParsedPrompt, ...]:
    """Parse every ``||`` stage of ``prompt``, errors placed in the whole prompt's characters.

    The api reads one prompt several times at submit (syntax, networks, areas, hashes, the models a
    job needs), each a walk over up to 20,000 characters, so recent results are kept; they are
    shared, and read only. A prompt that does not parse raises again each time.
    """
    stages = []
    start = 0
    for part in prompt.split(STAGE_SEPARATOR):
        stages.append(_Parser(part, start).parse())
        start += len(part) + len(STAGE_SEPARATOR)
    return tuple(stages)


class _Parser:
    """One pass over ``source``; ``offset`` is where ``source`` starts in what the user wrote."""

    def __init__(self, source: str, offset: int) -> None:
        self.source = source
        self.offset = offset
        self.pos = 0
        self.loras: list[Network] = []
        self.inversions: list[Network] = []
        self.clip_skips: list[int] = []
        self.regions: list[Region] = []
        self.reseeds: list[Reseed] = []

    def parse(self) -> ParsedPrompt:
        spans, _ = self.items(None, 0, 0)
        return ParsedPrompt(
            spans=merge_spans(spans),
            loras=self.loras,
            inversions=self.inversions,
            clip_skip=self.clip_skips[0] if self.clip_skips else 0,
            regions=self.regions,
            reseeds=self.reseeds,
        )

    def error(self, position: int, rule: str) -> PromptSyntaxError:
        return PromptSyntaxError(self.offset + position, rule)

    def items(self, close: str | None, opened: int, depth: int) -> tuple[list[Span], float | None]:
        """Spans up to ``close`` (weights relative to this group) and the explicit weight if any."""
        if depth > MAX_DEPTH:
            raise self.error(opened, f"brackets may nest at most {MAX_DEPTH} deep")
        source = self.source
        spans: list[Span] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                spans.append(Span("".join(text)))
                text.clear()

        while self.pos < len(source):
            char = source[self.pos]
            if char == "\\" and source[self.pos + 1 : self.pos + 2] in ESCAPABLE:
                text.append(source[self.pos + 1])
                self.pos += 2
            elif char in "([":
                flush()
                start = self.pos
                self.pos += 1
                inner, explicit = self.items(")" if char == "(" else "]", start, depth + 1)
                factor = explicit if explicit is not None else (ATTENTION if char == "(" else 1 / ATTENTION)
                spans.extend(Span(span.text, span.weight * factor) for span in inner)
            elif char in ")]":
                if char == close:
                    flush()
                    self.pos += 1
                    return spans, None
                if close is None:
                    raise self.error(self.pos, f"'{char}' has no matching '{OPENERS[char]}'")
                raise self.error(
                    self.pos,
                    f"expected '{close}' for the '{source[opened]}' at character {self.offset + opened}",
                )
            elif char == ":" and close == ")":
                flush()
                return spans, self.weight()
            elif char == "<" and (token := TOKEN_START.match(source, self.pos)):
                self.token(token.group(1), token.end())
            elif (ranged := self.layer_range()) is not None:
                text.append(ranged)
            else:
                text.append(char)
                self.pos += 1
        if close is not None:
            raise self.error(opened, f"'{source[opened]}' is never closed")
        flush()
        return spans, None

    def weight(self) -> float:
        """The explicit weight after ``:`` in a parenthesis, and its closing ``)``."""
        self.pos += 1
        self.skip_spaces()
        number = NUMBER.match(self.source, self.pos)
        if number is None:
            raise self.error(
                self.pos, "expected a weight (a number) after ':'; write '\\:' for a literal colon"
            )
        value = float(number.group())
        if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
            raise self.error(self.pos, f"weight must be a number from {-MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
        self.pos = number.end()
        self.skip_spaces()
        if self.source[self.pos : self.pos + 1] != ")":
            raise self.error(self.pos, "expected ')' after the weight")
        self.pos += 1
        return value

    def skip_spaces(self) -> None:
        while self.source[self.pos : self.pos + 1] in (" ", "\t"):
            self.pos += 1

    def layer_range(self) -> str | None:
        """``name-{start,stop[,step]}`` at a word's start, as ``name-start name-(start+step) ...``."""
        source, pos = self.source, self.pos
        if pos > 0 and (source[pos - 1].isalnum() or source[pos - 1] in "_.-"):
            return None
        match = RANGE.match(source, pos)
        if match is None:
            return None
        name, start, stop, step = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        stride = int(step) if step is not None else 1
        brace = match.start(2) - 1
        if stride < 1:
            raise self.error(brace, "a range's step must be at least 1")
        if stop <= start:
            raise self.error(brace, "a range's end must be greater than its start")
        if -(-(stop - start) // stride) > MAX_RANGE:
            raise self.error(brace, f"a range may expand to at most {MAX_RANGE} tokens")
        self.pos = match.end()
        return " ".join(f"{name}-{index}" for index in range(start, stop, stride))

    def token(self, kind: str, body_start: int) -> None:
        """A ``<kind:...>`` token from after its ``kind:`` to its ``>``."""
        end = self.source.find(">", body_start)
        if end < 0:
            raise self.error(self.pos, f"'<{kind}:' is never closed with '>'")
        fields = _fields(self.source, body_start, end, 6 if kind == "region" else -1)
        parse = {
            "lora": self.network,
            "inversion": self.network,
            "embeddings": self.network,
            "clip": self.clip,
            "region": self.region,
            "reseed": self.reseed,
        }[kind]
        parse(kind, fields, end)
        self.pos = end + 1

    def expect(self, kind: str, fields: list[tuple[str, int]], end: int, shape: str) -> None:
        """Refuse a token with other fields than ``shape``: at its first extra ``:``, or its ``>``."""
        count = shape.count(":") + 1
        if len(fields) != count:
            where = fields[count][1] - 1 if len(fields) > count else end
            raise self.error(where, f"expected <{kind}:{shape}>")

    def network(self, kind: str, fields: list[tuple[str, int]], end: int) -> None:
        self.expect(kind, fields, end, "NAME:WEIGHT")
        (name, name_at), weight = fields
        if not name.strip():
            raise self.error(name_at, f"<{kind}:...> needs a name")
        value = self.number(weight, "weight")
        if abs(value) > MAX_NETWORK_WEIGHT:
            rule = f"weight must be from {-MAX_NETWORK_WEIGHT:g} to {MAX_NETWORK_WEIGHT:g}"
            raise self.error(weight[1], rule)
        entry = Network(name, value)
        (self.loras if kind == "lora" else self.inversions).append(entry)

    def clip(self, kind: str, fields: list[tuple[str, int]], end: int) -> None:
        self.expect(kind, fields, end, "skip:N")
        if fields[0][0] != "skip":
            raise self.error(fields[0][1], "expected <clip:skip:N>")
        self.clip_skips.append(self.integer(fields[1], "CLIP skip"))

    def region(self, kind: str, fields: list[tuple[str, int]], end: int) -> None:
        self.expect(kind, fields, end, "TOP:LEFT:BOTTOM:RIGHT:STRENGTH:FEATHER:PROMPT")
        top, left, bottom, right = (self.integer(item, "coordinate") for item in fields[:4])
        feather, feather_at = fields[5]
        match = FEATHER.fullmatch(feather)
        if match is None:
            raise self.error(
                feather_at, "feather must be a number, optionally followed by '_' and edges of TLBR"
            )
        value = self.number((match.group("value"), feather_at), "feather")
        text, text_at = fields[6]
        append_base = text.rstrip().endswith("+")
        own = text.rstrip().removesuffix("+") if append_base else text
        if not own.strip():
            raise self.error(text_at, "a region needs a prompt")
        # The region's own prompt is encoded later: its mistakes are refused now, where they are.
        _Parser(own, self.offset + text_at).parse()
        self.regions.append(
            Region(
                top,
                left,
                bottom,
                right,
                self.number(fields[4], "strength"),
                value,
                match.group("edges") or ALL_EDGES,
                own.strip(),
                append_base,
            )
        )

    def reseed(self, kind: str, fields: list[tuple[str, int]], end: int) -> None:
        self.expect(kind, fields, end, "TOP:LEFT:BOTTOM:RIGHT:SEED")
        top, left, bottom, right = (self.integer(item, "coordinate") for item in fields[:4])
        seed, seed_at = fields[4]
        if SEED.fullmatch(seed) is None or not -1 <= int(seed) < SEED_LIMIT:
            raise self.error(seed_at, f"seed must be an integer from -1 to {SEED_LIMIT - 1}")
        self.reseeds.append(Reseed(top, left, bottom, right, int(seed)))

    def number(self, item: tuple[str, int], what: str) -> float:
        text, at = item
        value = float(text) if NUMBER.fullmatch(text) else math.nan
        if not math.isfinite(value):
            raise self.error(at, f"{what} must be a number")
        return value

    def integer(self, item: tuple[str, int], what: str) -> int:
        text, at = item
        if INTEGER.fullmatch(text) is None:
            raise self.error(at, f"{what} must be a whole number from 0 to 999999999")
        return int(text)


def _fields(source: str, start: int, end: int, splits: int) -> list[tuple[str, int]]:
    """The ``:``-separated fields of ``source[start:end]`` with where each starts."""
    fields = []
    for part in source[start:end].split(":", splits):
        fields.append((part, start))
        start += len(part) + 1
    return fields


def merge_spans(spans: list[Span]) -> list[Span]:
    """Adjacent spans of equal weight joined into one, as lpw joins them before tokenizing."""
    merged: list[Span] = []
    for span in spans:
        if merged and merged[-1].weight == span.weight:
            merged[-1] = Span(merged[-1].text + span.text, span.weight)
        else:
            merged.append(span)
    return merged

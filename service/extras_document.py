"""The extras document as an admin sends it: bounded parsing, strict validation, conversion entries.

An extras document is onnx-web's model catalogue (contract §11.2): sections ``diffusion``,
``correction``, ``upscaling``, ``networks`` and ``sources`` list entries, each with a ``name`` and a
``source``; ``strings`` holds translations. ``PUT /api/extras`` stores one and enqueues a
conversion job per entry whose model the store lacks (``service.extras``). Unlike onnx-web, which
wrote the file first and only logged what failed validation, nothing is stored or enqueued unless
the whole document is valid, and every problem is reported at once, each as ``(field, rule)`` with
a field path such as ``diffusion[1].source``.

What is checked, beyond the shape (a JSON schema, ``additionalProperties: false`` everywhere):

- **bounds**: the text (``MAX_DOCUMENT_BYTES``), how deep it nests (``MAX_DEPTH``), entries per
  section, string lengths, the depth of ``strings``; YAML aliases are refused (an alias bomb expands
  a few bytes into gigabytes);
- **values**: only what Postgres stores as JSON: objects with string keys, arrays, finite numbers,
  booleans, null and strings without NUL or unpaired surrogates (no YAML dates, binary or pairs);
- **sources**: ``service.sources.parse_source`` (a scheme we fetch, no credentials in
  URLs, no ``..``), without any I/O; the worker resolves and fetches them;
- **names**: safe as a folder or file name once the kind's prefix is applied (as onnx-web's
  converter does: ``dreamshaper`` becomes ``diffusion-dreamshaper``), and unique in the whole
  document (a worker's pull cache keeps one copy per name, whatever its kind);
- **features**: a field this server accepts in onnx-web's schema but cannot honour is a 400 naming
  it, never silently ignored (``loras``/``inversions`` blended at conversion time).

``Entry.entry_hash`` hashes what decides the converted files (not the label, hash or tokens, which
only change how the model is listed), so saving a document again converts only what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

from pipelines.models.registry import EXTRAS_LISTS
from service.errors import InvalidParams
from service.inputs import check_text
from service.sources import SourceError, parse_source

#: The largest extras document accepted, as text.
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_ENTRIES = 1000
#: How deeply objects and arrays may nest in a whole document (``strings`` nests deepest, at 10).
MAX_DEPTH = 16
#: The widest integer a document may hold (YAML reads hexadecimal of any length, which neither
#: ``json.dumps`` nor a client's JSON parser could write back).
MAX_INTEGER_BITS = 64
#: Value problems reported at once: enough to fix a document, never a whole echoed one.
MAX_VALUE_PROBLEMS = 10
#: How deep ``strings`` may nest (language, namespace, then keys).
MAX_STRINGS_DEPTH = 8
#: A converted model's name: a folder or file name on every platform.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit, at most 100"
#: Diffusion names already carrying one of these are not prefixed (onnx-web's converter rule).
DIFFUSION_PREFIXES = ("diffusion-", "stable-diffusion-", "upscaling-")
#: Entry keys that only change how a model is listed, not its files.
LISTING_KEYS = frozenset({"label", "hash", "tokens", "token"})
#: Sections whose entries become models in the store, and the kind each gives.
SECTION_KINDS = {"diffusion": "diffusion", "correction": "correction", "upscaling": "upscaling"}
NETWORK_KINDS = ("lora", "inversion", "control")
DEPTH_RULE = f"nested deeper than {MAX_DEPTH} levels of objects and arrays"

_FORMATS = ["bin", "ckpt", "onnx", "pt", "pth", "safetensors", "zip"]
_TEXT = {"type": "string", "maxLength": 500}
_BASE: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 100},
    "source": {"type": "string", "minLength": 1, "maxLength": 2048},
    "format": {"enum": _FORMATS},
    "label": _TEXT,
    "half": {"type": "boolean"},
    "opset": {"type": "integer", "minimum": 11, "maximum": 21},
    #: The hash image metadata reports for the model (onnx-web reads it from any list's entries).
    "hash": {"type": "string", "maxLength": 64},
    #: Our addition: the download's expected sha256; the conversion fails on a mismatch.
    "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
}
_NESTED_NETWORK = {
    "type": "object",
    "required": ["name", "source"],
    "additionalProperties": False,
    "properties": {
        **_BASE,
        "type": {"enum": ["lora", "inversion"]},
        "model": {"enum": ["cloneofsimo", "sd-scripts", "concept", "embeddings"]},
        "token": _TEXT,
        "tokens": {"type": "array", "maxItems": 100, "items": _TEXT},
        "weight": {"type": "number"},
    },
}


def _section(extra: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": MAX_ENTRIES,
        "items": {
            "type": "object",
            "required": ["name", "source", *required],
            "additionalProperties": False,
            "properties": {**_BASE, **extra},
        },
    }


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "diffusion": _section(
            {
                "config": _TEXT,
                "image_size": {"type": "integer", "minimum": 64, "maximum": 4096},
                "pipeline": {
                    "enum": [
                        "archive",
                        "controlnet",
                        "img2img",
                        "inpaint",
                        "lpw",
                        "panorama",
                        "pix2pix",
                        "txt2img",
                        "txt2img-legacy",
                        "txt2img-sdxl",
                        "upscale",
                    ]
                },
                "vae": _TEXT,
                "version": {"enum": ["v1", "v2", "v2.1"]},
                #: Our addition: SD 2.x checkpoints do not say whether they predict noise or v.
                "prediction": {"enum": ["epsilon", "v_prediction"]},
                "inversions": {"type": "array", "maxItems": 100, "items": _NESTED_NETWORK},
                "loras": {"type": "array", "maxItems": 100, "items": _NESTED_NETWORK},
            }
        ),
        "correction": _section({"model": {"enum": ["codeformer", "gfpgan"]}}),
        "upscaling": _section(
            {
                "scale": {"type": "number", "minimum": 1, "maximum": 8},
                "model": {"enum": ["bsrgan", "resrgan", "swinir"]},
            },
            required=("scale",),
        ),
        "networks": _section(
            {
                "type": {"enum": list(NETWORK_KINDS)},
                "model": {"enum": ["cloneofsimo", "sd-scripts", "concept", "embeddings"]},
                "token": _TEXT,
                "tokens": {"type": "array", "maxItems": 100, "items": _TEXT},
                "weight": {"type": "number"},
            },
            required=("type",),
        ),
        "sources": _section({"dest": _TEXT}),
        "strings": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z]{2}$"},
            "additionalProperties": {"type": "object"},
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@dataclass(frozen=True)
class Problem:
    """One rule a document breaks: where (``diffusion[1].source``, or ``""`` for all of it) and what."""

    field: str
    rule: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "rule": self.rule}


class ExtrasInvalid(ValueError):
    """The document breaks at least one rule; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(f"{first.field}: {first.rule}" if first.field else first.rule)


@dataclass(frozen=True)
class Entry:
    """One entry of a document that names a model of the store."""

    section: str
    index: int
    #: The model's name in the store and in requests (the kind's prefix applied).
    name: str
    #: The store's kind: ``diffusion``, ``correction``, ``upscaling``, ``lora``, ``inversion``, ``control``.
    kind: str
    entry: Mapping[str, Any]

    @property
    def field(self) -> str:
        return f"{self.section}[{self.index}]"

    @property
    def entry_hash(self) -> str:
        """sha256 of what decides the converted files: the entry less its listing keys, its kind."""
        decisive = {key: value for key, value in self.entry.items() if key not in LISTING_KEYS}
        canonical = json.dumps({"kind": self.kind, "name": self.name, "entry": decisive}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def label(self) -> str | None:
        label = self.entry.get("label")
        return label if isinstance(label, str) else None


@dataclass(frozen=True)
class ExtrasDocument:
    """A valid extras document: its data and the entries that name models of the store."""

    data: Mapping[str, Any]
    entries: tuple[Entry, ...]
    #: ``sources`` entries: plain downloads onnx-web made for its own helpers; nothing here uses them.
    sources: tuple[str, ...]


def parse_document(text: str | bytes) -> dict[str, Any]:
    """JSON or YAML text to an object, bounded.

    Raises:
        ExtrasInvalid: too large, not UTF-8, not JSON nor YAML, YAML with aliases, not an object,
            nested too deeply, or holding a value Postgres cannot store as JSON.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ExtrasInvalid([Problem("", f"the document is over {MAX_DOCUMENT_BYTES} bytes")])
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ExtrasInvalid([Problem("", f"the document is not UTF-8 text (byte {err.start})")]) from None
    try:
        data = json.loads(decoded)
    except RecursionError:
        raise ExtrasInvalid([Problem("", DEPTH_RULE)]) from None
    except ValueError:
        data = _load_yaml(decoded)
    if not isinstance(data, dict):
        raise ExtrasInvalid([Problem("", "the document must be an object (JSON or YAML)")])
    problems = _value_problems(data)
    if problems:
        raise ExtrasInvalid(problems)
    return data


def validate_document(data: Mapping[str, Any]) -> ExtrasDocument:
    """Check a parsed document against every rule; the entries the store will hold.

    Raises:
        ExtrasInvalid: with every problem found, shape first (later checks need the shape).
    """
    problems = [Problem(_path(error.absolute_path), error.message[:200]) for error in _shape_errors(data)]
    if problems:
        raise ExtrasInvalid(problems)
    problems += _depth_problems(data.get("strings", {}), "strings", 1)
    entries: list[Entry] = []
    sources: list[str] = []
    taken: dict[str, str] = {}
    for section in EXTRAS_LISTS:
        for index, item in enumerate(data.get(section, [])):
            where = f"{section}[{index}]"
            problems += _source_problems(item, where)
            for nested_type in ("loras", "inversions"):
                if item.get(nested_type):
                    problems.append(
                        Problem(
                            f"{where}.{nested_type}",
                            "blending networks into a model at conversion is not supported: "
                            "list them under networks and use <lora:name:weight> or "
                            "<inversion:name:weight> in prompts",
                        )
                    )
            if section == "sources":
                sources.append(item["name"])
                continue
            entry = _entry(section, index, item)
            if not NAME_PATTERN.match(entry.name):
                problems.append(
                    Problem(
                        f"{where}.name",
                        "letters, digits, '.', '_' and '-' only, starting with a letter or digit",
                    )
                )
            # One namespace for all: a worker's pull cache keeps one copy per name.
            earlier = taken.setdefault(entry.name, where)
            if earlier != where:
                problems.append(Problem(f"{where}.name", f"{entry.name!r} is already the name of {earlier}"))
            entries.append(entry)
    if problems:
        raise ExtrasInvalid(problems)
    return ExtrasDocument(data=data, entries=tuple(entries), sources=tuple(sources))


def model_name(section: str, name: str) -> str:
    """The store's name of an entry's model: the kind's prefix added as onnx-web's converter does."""
    if section == "diffusion":
        return name if name.startswith(DIFFUSION_PREFIXES) else f"diffusion-{name}"
    if section in ("correction", "upscaling"):
        return name if name.startswith(f"{section}-") else f"{section}-{name}"
    return name


def _entry(section: str, index: int, item: Mapping[str, Any]) -> Entry:
    kind = item["type"] if section == "networks" else SECTION_KINDS[section]
    return Entry(section, index, model_name(section, item["name"]), kind, item)


def _shape_errors(data: Mapping[str, Any]) -> Iterator[jsonschema.ValidationError]:
    # best_match per path would drop some; a sorted, bounded list keeps answers small and stable.
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda error: list(map(str, error.absolute_path)))
    return iter(errors[:50])


def _source_problems(item: Mapping[str, Any], where: str) -> list[Problem]:
    try:
        parse_source(item["source"])
    except SourceError as err:
        return [Problem(f"{where}.source", str(err))]
    return []


def _depth_problems(tree: Any, where: str, depth: int) -> list[Problem]:
    if not isinstance(tree, dict):
        return []
    if depth > MAX_STRINGS_DEPTH:
        return [Problem(where, f"nested deeper than {MAX_STRINGS_DEPTH} levels")]
    problems: list[Problem] = []
    for key, value in tree.items():
        problems += _depth_problems(value, f"{where}.{key}", depth + 1)
    return problems[:10]


def _value_problems(data: dict[str, Any]) -> list[Problem]:
    """Every value Postgres could not store as JSON, in document order, and nesting past ``MAX_DEPTH``.

    The walk is iterative, so a deep document costs no recursion (jsonschema's walk recurses).
    """
    problems: list[Problem] = []
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while pending and len(problems) < MAX_VALUE_PROBLEMS:
        value, where = pending.pop()
        children: list[tuple[Any, tuple[str | int, ...]]] = []
        if isinstance(value, dict | list) and len(where) >= MAX_DEPTH:
            problems.append(Problem(_path(where), DEPTH_RULE))
        elif isinstance(value, dict):
            for key, item in value.items():
                rule = _key_rule(key)
                if rule:
                    problems.append(Problem(_path(where), rule))
                else:
                    # A path names where a problem is, never echoes a whole key.
                    children.append((item, (*where, key if len(key) <= 40 else key[:39] + "…")))
        elif isinstance(value, list):
            children = [(item, (*where, index)) for index, item in enumerate(value)]
        else:
            rule = _scalar_rule(value)
            if rule:
                problems.append(Problem(_path(where), rule))
        pending.extend(reversed(children))
    return problems[:MAX_VALUE_PROBLEMS]


def _key_rule(key: Any) -> str | None:
    if not isinstance(key, str):
        return "keys must be strings"
    rule = _text_rule(key)
    return f"a key {rule}" if rule else None


def _scalar_rule(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_rule(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number (not NaN or Infinity)"
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        return f"must be an integer of at most {MAX_INTEGER_BITS} bits"
    if value is None or isinstance(value, bool | int | float):
        return None
    return "must be a JSON value: a string, number, boolean, null, array or object (quote YAML dates)"


def _text_rule(text: str) -> str | None:
    try:
        check_text(text, "")
    except InvalidParams as err:
        return err.rule
    return None


def _path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not accepted")
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise ExtrasInvalid([Problem("", DEPTH_RULE)]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ExtrasInvalid([Problem("", f"neither JSON nor YAML{where}: {reason}"[:300])]) from None
    except Exception:
        # PyYAML's constructors fail in many ways on a value their pattern or tag let through
        # (ValueError for month 13 or an integer over 4300 digits, KeyError for ``!!bool x``,
        # AttributeError for ``!!timestamp 1``), and their text names Python's internals.
        rule = "a YAML value cannot be read: a date that does not exist, a number too long or a bad tag"
        raise ExtrasInvalid([Problem("", rule)]) from None

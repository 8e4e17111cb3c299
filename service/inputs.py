"""Request documents decoded and bounded before anything reads them.

Every value a client sends reaches the parsers through here: JSON and YAML texts are size-checked
before parsing, parsed documents are walked once (depth, number of keys and items), and every
string in them, keys included, is refused if it holds a NUL or an unpaired surrogate (Postgres
stores neither, and they have no business in a prompt). Each refusal is an ``InvalidParams`` that
names the field, so a hostile body costs a bounded amount of work and gets a 400, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from service.errors import InvalidParams, PayloadTooLarge

#: The largest JSON or YAML document (a body, or a multipart ``json``/``chain`` field) we parse.
MAX_DOCUMENT_BYTES = 1024 * 1024
#: How deeply objects and arrays may nest; the chain language needs four levels.
MAX_DEPTH = 32
#: Keys and items in one document, all levels together (a 50-stage chain uses about 1,500).
MAX_NODES = 20_000


def load_json(raw: bytes | str, field: str) -> Any:
    """Parse a JSON document of at most ``MAX_DOCUMENT_BYTES``, then bound and check it."""
    _check_size(raw, field)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text)
    except UnicodeDecodeError as err:
        raise InvalidParams(field, f"must be UTF-8 text (a bad byte at position {err.start})") from err
    except RecursionError as err:
        raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep") from err
    except ValueError as err:
        raise InvalidParams(field, f"is not valid JSON: {_first_line(err)}") from err
    check_document(value, field)
    return value


def load_json_or_yaml(text: str, field: str) -> Any:
    """A form field holding JSON, or YAML as onnx-web also accepts (without aliases); 400 otherwise."""
    _check_size(text, field)
    try:
        value = json.loads(text)
    except RecursionError as err:
        raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep") from err
    except ValueError:
        value = _load_yaml(text, field)
    check_document(value, field)
    return value


def check_document(value: Any, field: str) -> None:
    """Refuse a parsed document that nests too deeply, is too large, or holds a bad string.

    The walk is iterative, so its cost is bounded by ``MAX_NODES`` whatever the document's shape.
    """
    pending: list[tuple[Any, str, int]] = [(value, field, 0)]
    nodes = 0
    while pending:
        node, path, depth = pending.pop()
        if isinstance(node, str):
            check_text(node, path)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep")
        nodes += len(node)
        if nodes > MAX_NODES:
            raise InvalidParams(field, f"must hold at most {MAX_NODES} keys and items in all")
        if isinstance(node, dict):
            for key, item in node.items():
                check_text(str(key), f"{path} key")
                pending.append((item, f"{path}.{_short(str(key))}", depth + 1))
        else:
            pending.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(node))


def check_text(text: str, field: str) -> str:
    """Return ``text`` if it has no NUL character and no unpaired surrogate; 400 naming ``field``."""
    if "\x00" in text:
        raise InvalidParams(field, "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidParams(field, f"must be valid Unicode (an unpaired surrogate at {err.start})") from err
    return text


def check_query(params: Mapping[str, Any]) -> None:
    """Check every query-string name and value, whatever the route reads later."""
    for name, value in params.items():
        check_text(name, "query")
        for item in value if isinstance(value, list) else [value]:
            check_text(str(item), _short(name))


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a few bytes of aliases can expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


class _AliasRefused(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__(f"line {mark.line + 1}, column {mark.column + 1}")


def _load_yaml(text: str, field: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except _AliasRefused as err:
        raise InvalidParams(field, f"must not use YAML aliases ({err})") from err
    except RecursionError as err:
        raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep") from err
    except yaml.YAMLError as err:
        raise InvalidParams(field, f"is neither JSON nor YAML: {_first_line(err)}") from err


def _check_size(raw: bytes | str, field: str) -> None:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise PayloadTooLarge(f"{field}: the document is {size} bytes, more than {MAX_DOCUMENT_BYTES}")


def _first_line(err: Exception) -> str:
    return _short(next(iter(str(err).splitlines()), type(err).__name__), 120)


def _short(text: str, limit: int = 40) -> str:
    """A field name or message cut to ``limit`` characters, so errors never echo a whole input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"

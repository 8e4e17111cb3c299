"""Request documents decoded and bounded before anything reads them.

Every value a client sends reaches the parsers through here: JSON and YAML texts are size-checked
before parsing, parsed documents are walked once (depth, number of keys and items), and every
string in them, keys included, is refused if it holds a NUL or an unpaired surrogate (Postgres
stores neither, and they have no business in a prompt). A YAML document may hold only what JSON
can: string keys, and no dates, sets or binary values. Each refusal is an ``InvalidParams`` that
names the field, so a hostile body costs a bounded amount of work and gets a 400, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, unquote_to_bytes

import yaml

from service.errors import InvalidParams, PayloadTooLarge

#: The largest JSON or YAML document (a body, or a multipart ``json``/``chain`` field) we parse.
MAX_DOCUMENT_BYTES = 1024 * 1024
#: How deeply objects and arrays may nest; the chain language needs four levels.
MAX_DEPTH = 32
#: Keys and items in one document, all levels together (a 50-stage chain uses about 1,500).
MAX_NODES = 20_000
#: The longest integer literal we convert: even in hexadecimal (YAML) it has fewer decimal digits
#: than Python converts (4,300), whose refusal would name an interpreter setting.
MAX_INTEGER_CHARS = 1000


def load_json(raw: bytes | str, field: str) -> Any:
    """Parse a JSON document of at most ``MAX_DOCUMENT_BYTES``, then bound and check it."""
    _check_size(raw, field)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_int=_parse_int)
    except _Refused as err:
        raise InvalidParams(field, str(err)) from err
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
        value = json.loads(text, parse_int=_parse_int)
    except _Refused as err:
        raise InvalidParams(field, str(err)) from err
    except RecursionError as err:
        raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep") from err
    except ValueError:
        value = _load_yaml(text, field)
    check_document(value, field)
    return value


def check_document(value: Any, field: str) -> None:
    """Refuse a parsed document that nests too deeply, is too large, or holds a bad string or a
    value JSON has no type for.

    The walk is iterative, so its cost is bounded by ``MAX_NODES`` whatever the document's shape.
    """
    pending: list[tuple[Any, str, int]] = [(value, field, 0)]
    nodes = 0
    while pending:
        node, path, depth = pending.pop()
        if isinstance(node, str):
            check_text(node, path)
            continue
        if node is None or isinstance(node, int | float):
            continue
        if not isinstance(node, dict | list):
            raise InvalidParams(path, _not_json(node))
        if depth >= MAX_DEPTH:
            raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep")
        nodes += len(node)
        if nodes > MAX_NODES:
            raise InvalidParams(field, f"must hold at most {MAX_NODES} keys and items in all")
        if isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise InvalidParams(f"{path} key", _not_json(key, "a string"))
                check_text(key, f"{path} key")
                pending.append((item, f"{path}.{shorten(key)}", depth + 1))
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
            check_text(str(item), shorten(name))


def check_query_string(query_string: str, where: str = "query") -> None:
    """Refuse percent-escapes that are not UTF-8 in a query string or form, naming the parameter.

    Falcon decodes them to U+FFFD, so ``prompt=%ff`` would run with a prompt the client never
    wrote. A U+FFFD sent as its UTF-8 escapes (``%EF%BF%BD``) is a character like any other and is
    kept, as it is in a JSON body: only bytes that decode to nothing are refused.
    """
    rule = "must be UTF-8 text (percent-escapes of other bytes are refused)"
    for pair in query_string.split("&"):
        name, _, value = pair.partition("=")
        if not _is_utf8_escaped(name):
            raise InvalidParams(f"{where} parameter name", rule)
        if not _is_utf8_escaped(value):
            raise InvalidParams(shorten(unquote_plus(name)), rule)


def _is_utf8_escaped(text: str) -> bool:
    try:
        unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Refused(Exception):
    """A rule a document broke while it was parsed, raised from inside the parser."""


def _check_integer_length(text: str) -> None:
    """Refuse a long integer literal before converting it: Python's own refusal tells the client
    to change an interpreter setting, and converting thousands of digits costs quadratic time."""
    if len(text) > MAX_INTEGER_CHARS:
        raise _Refused(f"must not hold an integer longer than {MAX_INTEGER_CHARS} characters")


def _parse_int(text: str) -> int:
    _check_integer_length(text)
    return int(text)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (a few bytes of aliases can expand to gigabytes) or
    explicit tags (``!!bool x``, ``!!timestamp 1`` crash PyYAML's constructors), and with integers
    bounded as in JSON."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        where = f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}"
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"must not use YAML aliases ({where})")
        if getattr(event, "tag", None) not in (None, "!"):
            raise _Refused(f"must not use YAML tags ({where})")
        return super().compose_node(parent, index)

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        _check_integer_length(str(self.construct_scalar(node)))
        return self.construct_yaml_int(node)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_bounded_int)


def _load_yaml(text: str, field: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except _Refused as err:
        raise InvalidParams(field, str(err)) from err
    except RecursionError as err:
        raise InvalidParams(field, f"must not nest objects or arrays more than {MAX_DEPTH} deep") from err
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
        # PyYAML builds dates, timestamps and tagged values with Python's constructors, which raise
        # ValueError and the like for text its patterns let through (month 13, offset -99:00).
        raise InvalidParams(field, f"is neither JSON nor YAML: {_first_line(err)}") from err


def _not_json(value: Any, expected: str = "a string, number, boolean, null, array or object") -> str:
    """The rule a YAML value JSON has no type for breaks (a date, a set, binary data)."""
    return f"must be {expected}, not a YAML {type(value).__name__} (quote it to send it as text)"


def _check_size(raw: bytes | str, field: str) -> None:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise PayloadTooLarge(f"{field}: the document is {size} bytes, more than {MAX_DOCUMENT_BYTES}")


def _first_line(err: Exception) -> str:
    return shorten(next(iter(str(err).splitlines()), type(err).__name__), 120)


def shorten(text: str, limit: int = 40) -> str:
    """A field name or message cut to ``limit`` characters, so errors never echo a whole input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"

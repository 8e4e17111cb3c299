"""Request documents are bounded and checked before any parser or database sees them."""

from __future__ import annotations

import json

import pytest

from service.errors import InvalidParams, PayloadTooLarge
from service.inputs import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_INTEGER_CHARS,
    MAX_NODES,
    check_document,
    check_query,
    check_query_string,
    load_json,
    load_json_or_yaml,
)


def refused(call: object, *args: object) -> InvalidParams:
    with pytest.raises(InvalidParams) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"prompt": "a\x00b"}, "body.prompt"),
        ({"params": {"negativePrompt": "x\ud800"}}, "body.params.negativePrompt"),
        ({"stages": [{"name": "\x00"}]}, "body.stages[0].name"),
        ({"a\x00": 1}, "body key"),
    ],
)
def test_nul_characters_and_lone_surrogates_are_refused_wherever_they_are(
    document: object, field: str
) -> None:
    error = refused(check_document, document, "body")

    assert error.field == field


def test_json_escapes_for_nul_and_surrogates_are_refused_after_parsing() -> None:
    assert "NUL" in refused(load_json, b'{"prompt": "\\u0000"}', "body").rule
    assert "surrogate" in refused(load_json, b'{"prompt": "\\ud800"}', "body").rule


def test_a_pair_of_surrogates_is_one_character_and_fine() -> None:
    assert load_json(b'{"prompt": "\\ud83d\\ude00"}', "body") == {"prompt": "\U0001f600"}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_refused_without_a_recursion_error(depth: int) -> None:
    error = refused(load_json, "[" * depth + "]" * depth, "body")

    assert error.field == "body" and "deep" in error.rule


def test_nesting_up_to_the_limit_parses() -> None:
    depth = MAX_DEPTH - 1
    assert load_json("[" * depth + "]" * depth, "body") is not None


def test_too_many_keys_and_items_are_refused() -> None:
    document = json.dumps({"stages": [{"name": str(index)} for index in range(MAX_NODES)]})

    assert "keys and items" in refused(load_json, document, "chain").rule


def test_a_document_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge, match="body"):
        load_json(b" " * (MAX_DOCUMENT_BYTES + 1), "body")


def test_invalid_utf8_is_a_400_naming_the_position() -> None:
    assert "UTF-8" in refused(load_json, b'{"prompt": "\xff"}', "body").rule


def test_yaml_is_read_when_the_text_is_not_json() -> None:
    assert load_json_or_yaml("stages:\n  - name: a\n", "chain") == {"stages": [{"name": "a"}]}


def test_a_yaml_alias_bomb_is_refused_before_any_alias_is_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    error = refused(load_json_or_yaml, "\n".join(lines), "chain")

    assert error.field == "chain" and "aliases" in error.rule


def test_unsafe_yaml_tags_are_refused() -> None:
    error = refused(load_json_or_yaml, "!!python/object/apply:os.system ['true']", "chain")

    assert "must not use YAML tags" in error.rule


def test_deep_yaml_is_refused() -> None:
    assert "deep" in refused(load_json_or_yaml, "a: " + "[" * 5000 + "]" * 5000, "json").rule


@pytest.mark.parametrize("params", [{"jobs": "a\x00"}, {"jobs": ["ok", "b\ud800"]}, {"a\x00": "x"}])
def test_query_values_and_names_are_checked(params: dict[str, object]) -> None:
    refused(check_query, params)


def test_error_fields_never_echo_a_long_key() -> None:
    error = refused(check_document, {"k" * 10_000: "\x00"}, "body")

    assert len(error.field) < 100


@pytest.mark.parametrize(
    "text",
    [
        "steps: " + "9" * 5000,
        "steps: 0x" + "f" * 5000,
        "steps: " + "1:" * 3000 + "1",
        '{"steps": ' + "9" * 5000 + "}",
    ],
)
def test_a_long_integer_is_refused_with_our_rule_not_pythons(text: str) -> None:
    error = refused(load_json_or_yaml, text, "json")

    assert error.field == "json" and f"{MAX_INTEGER_CHARS} characters" in error.rule
    assert "sys." not in error.rule


def test_a_long_integer_in_a_json_body_is_refused_with_our_rule() -> None:
    assert "sys." not in refused(load_json, b"[" + b"9" * 5000 + b"]", "body").rule


@pytest.mark.parametrize("text", ["foo: 2024-13-45", "foo: 2001-12-14t21:59:43.10-99:00", "foo: 2024-02-30"])
def test_yaml_values_python_cannot_build_are_refused(text: str) -> None:
    assert "neither JSON nor YAML" in refused(load_json_or_yaml, text, "chain").rule


@pytest.mark.parametrize(
    ("text", "field", "kind"),
    [
        ("foo: 2024-01-02", "json.foo", "date"),
        ("foo: 2001-12-14t21:59:43.10-05:00", "json.foo", "datetime"),
        ("1: a", "json key", "int"),
        ("yes: a", "json key", "bool"),
    ],
)
def test_yaml_values_json_has_no_type_for_are_refused(text: str, field: str, kind: str) -> None:
    error = refused(load_json_or_yaml, text, "json")

    assert error.field == field and f"not a YAML {kind}" in error.rule


def test_yaml_integers_in_other_bases_are_still_read() -> None:
    assert load_json_or_yaml("a: 0x10\nb: 1:30\nc: -1_000", "json") == {"a": 16, "b": 90, "c": -1000}


@pytest.mark.parametrize(
    ("query", "field"),
    [("prompt=%ff%fe&steps=1", "prompt"), ("a+b=%c3", "a b"), ("%ff=1", "query parameter name")],
)
def test_percent_escapes_that_are_not_utf8_are_refused(query: str, field: str) -> None:
    error = refused(check_query_string, query)

    assert error.field == field and "UTF-8" in error.rule


def test_utf8_escapes_of_any_character_are_accepted() -> None:
    check_query_string("prompt=%EF%BF%BD+%F0%9F%98%80&x=%zz&y")


@pytest.mark.parametrize(
    "text", ["a: !!bool x", "a: !!timestamp 1", "a: !!int '-'", "a: !!set {1}", "a: !!binary aGVsbG8="]
)
def test_any_explicit_yaml_tag_is_refused(text: str) -> None:
    """PyYAML's constructors crash on these (KeyError, AttributeError, IndexError) or build sets."""
    error = refused(load_json_or_yaml, text, "chain")

    assert error.field == "chain" and "must not use YAML tags (line 1, column 4)" in error.rule

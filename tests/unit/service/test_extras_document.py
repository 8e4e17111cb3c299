"""The extras document as an admin sends it: parsing bounds, every rule, entry names and hashes."""

from __future__ import annotations

import json

import pytest

from service.extras_document import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_STRINGS_DEPTH,
    ExtrasInvalid,
    model_name,
    parse_document,
    validate_document,
)

CATALOGUE = {
    "diffusion": [
        {"name": "dreamshaper", "source": "civitai://128713", "label": "Dreamshaper"},
        {
            "name": "stable-diffusion-xl",
            "source": "stabilityai/stable-diffusion-xl-base-1.0",
            "pipeline": "txt2img-sdxl",
        },
    ],
    "correction": [{"name": "gfpgan", "source": "https://example.com/GFPGANv1.3.pth", "model": "gfpgan"}],
    "upscaling": [{"name": "upscaling-x4", "source": "./x4.safetensors", "scale": 4}],
    "networks": [
        {"name": "detail", "type": "lora", "source": "loras/detail.safetensors", "tokens": ["detailed"]},
        {"name": "canny", "type": "control", "source": "lllyasviel/sd-controlnet-canny"},
    ],
    "sources": [{"name": "detector", "source": "https://example.com/detector.pth", "dest": "faces"}],
    "strings": {"de": {"translation": {"model": {"diffusion-dreamshaper": "Traumschaf"}}}},
}


def problems(document: object) -> list[tuple[str, str]]:
    with pytest.raises(ExtrasInvalid) as raised:
        validate_document(parse_document(json.dumps(document)))
    return [(problem.field, problem.rule) for problem in raised.value.problems]


def test_a_full_catalogue_names_every_model_as_the_converter_does() -> None:
    document = validate_document(parse_document(json.dumps(CATALOGUE)))

    assert [(entry.field, entry.name, entry.kind) for entry in document.entries] == [
        ("diffusion[0]", "diffusion-dreamshaper", "diffusion"),
        ("diffusion[1]", "stable-diffusion-xl", "diffusion"),
        ("correction[0]", "correction-gfpgan", "correction"),
        ("upscaling[0]", "upscaling-x4", "upscaling"),
        ("networks[0]", "detail", "lora"),
        ("networks[1]", "canny", "control"),
    ]
    assert document.sources == ("detector",)
    assert document.entries[0].label == "Dreamshaper"


def test_yaml_is_read_but_its_aliases_are_not() -> None:
    assert parse_document("diffusion:\n  - name: a\n    source: ./a.safetensors\n") == {
        "diffusion": [{"name": "a", "source": "./a.safetensors"}]
    }
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(ExtrasInvalid, match="aliases"):
        parse_document(bomb)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "must be an object"),
        ("{unclosed: [", "neither JSON nor YAML"),
        ("x" * (MAX_DOCUMENT_BYTES + 1), "over"),
    ],
)
def test_text_that_is_no_document_is_refused(text: str | bytes, rule: str) -> None:
    with pytest.raises(ExtrasInvalid, match=rule):
        parse_document(text)


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ('{"a": ' * 5000 + "1" + "}" * 5000, "", f"nested deeper than {MAX_DEPTH}"),
        ("[" * 2500 + "]" * 2500, "", f"nested deeper than {MAX_DEPTH}"),
        ("- " * 2500 + "x", "", f"nested deeper than {MAX_DEPTH}"),
        ('{"k": ' * 20 + "{}" + "}" * 20, ".".join(["k"] * MAX_DEPTH), f"nested deeper than {MAX_DEPTH}"),
        ("a: " + "7" * 5000, "", "cannot be read"),
        ("a: 2024-13-45", "", "cannot be read"),
        ("a: !!bool x", "", "cannot be read"),
        ("a: !!timestamp 1", "", "cannot be read"),
        ("a: !!int '-'", "", "cannot be read"),
        ("a: 0x" + "f" * 5000, "a", "at most 64 bits"),
        ('{"a": [' + "9" * 4000 + "]}", "a[0]", "at most 64 bits"),
        ("a: 2024-01-02", "a", "JSON value"),
        ("a: !!binary aGk=", "a", "JSON value"),
        ("a: !!omap [b: 1]", "a[0]", "JSON value"),
        ("1: x", "", "keys must be strings"),
        ('{"a": [1, NaN]}', "a[1]", "finite number"),
        ('{"a": {"b": Infinity}}', "a.b", "finite number"),
        ('{"a": 1e999}', "a", "finite number"),
        ("a: .nan", "a", "finite number"),
        ('{"diffusion": [{"name": "x\\u0000y"}]}', "diffusion[0].name", "NUL"),
        ('{"a": "\\ud800"}', "a", "unpaired surrogate"),
        ('a: "\\ud800"', "a", "unpaired surrogate"),
        ('{"\\u0000": 1}', "", "NUL"),
    ],
)
def test_a_document_the_database_cannot_store_is_refused_naming_where(
    text: str, field: str, rule: str
) -> None:
    with pytest.raises(ExtrasInvalid) as raised:
        parse_document(text)

    (problem,) = raised.value.problems
    assert problem.field == field and rule in problem.rule, problem
    assert "0x" not in problem.rule and "sys." not in problem.rule


def test_every_value_problem_is_reported_in_document_order() -> None:
    with pytest.raises(ExtrasInvalid) as raised:
        parse_document('{"a": NaN, "b": [1, "\\u0000"], "c": {"d": -Infinity}}')

    assert [problem.field for problem in raised.value.problems] == ["a", "b[1]", "c.d"]


def test_every_shape_problem_is_reported_with_its_field() -> None:
    found = problems(
        {
            "diffusion": [{"name": "a"}, {"name": "b", "source": "./b", "colour": "red"}],
            "upscaling": [{"name": "u", "source": "./u.pth"}],
            "networks": [{"name": "n", "source": "./n.safetensors", "type": "hypernetwork"}],
            "strings": {"deu": {}},
            "models": [],
        }
    )

    fields = [field for field, _ in found]
    assert fields == sorted(fields)
    assert {"", "diffusion[0]", "diffusion[1]", "upscaling[0]", "networks[0].type", "strings"} <= set(fields)
    assert any("'source' is a required property" in rule for _, rule in found)
    assert any("'scale' is a required property" in rule for _, rule in found)


def test_rules_past_the_shape_each_name_their_field() -> None:
    found = problems(
        {
            "diffusion": [
                {"name": "a", "source": "../../etc/passwd"},
                {"name": "diffusion-a", "source": "https://user:pw@example.com/a.safetensors"},
                {"name": "bad name", "source": "ftp://example.com/x"},
                {
                    "name": "m",
                    "source": "./m.safetensors",
                    "loras": [{"name": "l", "source": "./l.safetensors"}],
                },
            ],
            "networks": [{"name": "diffusion-a", "type": "lora", "source": "./x.safetensors"}],
        }
    )

    assert [field for field, _ in found] == [
        "diffusion[0].source",
        "diffusion[1].source",
        "diffusion[1].name",
        "diffusion[2].source",
        "diffusion[2].name",
        "diffusion[3].loras",
        "networks[0].name",
    ]
    assert "already the name of diffusion[0]" in dict(found)["diffusion[1].name"]
    assert "pw" not in str(found)


def test_strings_nest_only_so_deep() -> None:
    tree: dict[str, object] = {}
    node = tree
    for _ in range(MAX_STRINGS_DEPTH + 2):
        node["k"] = {}
        node = node["k"]  # type: ignore[assignment]
    assert problems({"strings": {"en": tree}})[0][0].startswith("strings.en.k")


def test_an_entrys_hash_ignores_how_it_is_listed_and_follows_what_it_converts() -> None:
    def entry_hash(**changes: object) -> str:
        entry = {"name": "detail", "type": "lora", "source": "./d.safetensors", **changes}
        return validate_document({"networks": [entry]}).entries[0].entry_hash

    base = entry_hash()
    assert entry_hash(label="Detail", tokens=["sharp"]) == base
    assert entry_hash(source="./e.safetensors") != base
    assert entry_hash(sha256="a" * 64) != base


@pytest.mark.parametrize(
    ("section", "name", "expected"),
    [
        ("diffusion", "dreamshaper", "diffusion-dreamshaper"),
        ("diffusion", "stable-diffusion-v1-5", "stable-diffusion-v1-5"),
        ("diffusion", "upscaling-stable-diffusion-x4", "upscaling-stable-diffusion-x4"),
        ("correction", "codeformer", "correction-codeformer"),
        ("upscaling", "upscaling-x2", "upscaling-x2"),
        ("networks", "detail", "detail"),
    ],
)
def test_model_names_get_their_kinds_prefix(section: str, name: str, expected: str) -> None:
    assert model_name(section, name) == expected

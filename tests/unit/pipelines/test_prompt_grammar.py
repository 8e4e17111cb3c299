"""The prompt language (contract §9): every construct, error positions, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.diffusion.prompt_grammar import (
    ESCAPABLE,
    MAX_DEPTH,
    Network,
    ParsedPrompt,
    PromptSyntaxError,
    Region,
    Reseed,
    Span,
    check_areas,
    parse_prompt,
    parse_stages,
)


def spans(prompt: str) -> list[tuple[str, object]]:
    """The spans of ``prompt`` as ``(text, weight)``, weights compared to within rounding."""
    return [(span.text, pytest.approx(span.weight)) for span in parse_prompt(prompt).spans]


def test_plain_text_is_one_span_of_weight_one() -> None:
    parsed = parse_prompt("a photo of a cat, detailed")
    assert parsed.spans == [Span("a photo of a cat, detailed", 1.0)]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("((cat))", [("cat", 1.21)]),
        ("(((cat)))", [("cat", 1.331)]),
        ("[cat]", [("cat", 1 / 1.1)]),
        ("[[cat]]", [("cat", 1 / 1.21)]),
        ("([cat])", [("cat", 1.0)]),
        ("(cat:1.5)", [("cat", 1.5)]),
        ("( cat : 0.25 )", [(" cat ", 0.25)]),
        ("(a, b:0.8) c", [("a, b", 0.8), (" c", 1.0)]),
        ("((cat:1.5))", [("cat", 1.65)]),
        ("[(cat:2)]", [("cat", 2 / 1.1)]),
        ("(a (b) c:2)", [("a ", 2.0), ("b", 2.2), (" c", 2.0)]),
        ("(cat:-0.5)", [("cat", -0.5)]),
        ("(cat:.5)", [("cat", 0.5)]),
        ("(cat:1e-1)", [("cat", 0.1)]),
    ],
)
def test_brackets_weight_their_text(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert spans(prompt) == expected


def test_adjacent_runs_of_one_weight_merge_as_lpw_merges_them() -> None:
    assert spans("(a)(b) c") == [("ab", 1.1), (" c", 1.0)]
    assert spans("(a:1) b") == [("a b", 1.0)]
    assert spans("()") == []


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        (r"\(cat\)", "(cat)"),
        (r"\[cat\]", "[cat]"),
        (r"a \\ b", "a \\ b"),
        (r"(time\: noon)", "time: noon"),
        (r"\<lora:x:1>", "<lora:x:1>"),
        (r"x-\{0,2}", "x-{0,2}"),
        (r"C:\path\n", "C:\\path\\n"),
        ("trailing \\", "trailing \\"),
    ],
)
def test_escapes_make_brackets_literal_and_other_backslashes_stay(prompt: str, text: str) -> None:
    assert parse_prompt(prompt).text == text


@pytest.mark.parametrize("prompt", ["style: anime", "[a:1.5]", "a <b> c", "2 > 1 < 3", "a || b", "(a|b)"])
def test_characters_outside_their_construct_are_text(prompt: str) -> None:
    parsed = parse_prompt(prompt)
    expected = prompt.strip("()[]")
    assert parsed.text == expected
    assert parsed.loras == [] and parsed.regions == []


def test_network_tokens_are_recorded_and_removed() -> None:
    parsed = parse_prompt(
        "a cat <lora:details:0.5>, <inversion:autumn:1> <embeddings:bad-hands:-.3> <lora:x y:2>"
    )
    assert parsed.text == "a cat ,   "
    assert parsed.loras == [Network("details", 0.5), Network("x y", 2.0)]
    assert parsed.inversions == [Network("autumn", 1.0), Network("bad-hands", -0.3)]


def test_tokens_inside_a_group_leave_its_text_whole() -> None:
    parsed = parse_prompt("(red <lora:x:1>car:1.3)")
    assert parsed.spans == [Span("red car", 1.3)]
    assert parsed.loras == [Network("x", 1.0)]


def test_first_clip_skip_wins() -> None:
    parsed = parse_prompt("<clip:skip:2>a cat<clip:skip:3>")
    assert parsed.text == "a cat"
    assert parsed.clip_skip == 2
    assert parse_prompt("a cat").clip_skip == 0


def test_layer_ranges_expand_to_layer_tokens() -> None:
    assert (
        parse_prompt("bad-hands-{0,5}, x").text
        == "bad-hands-0 bad-hands-1 bad-hands-2 bad-hands-3 bad-hands-4, x"
    )
    expanded = parse_prompt("name-{0,100,2}").text.split(" ")
    assert (
        expanded[:3] == ["name-0", "name-2", "name-4"] and expanded[-1] == "name-98" and len(expanded) == 50
    )
    assert spans("(style-{1,3}:1.4)") == [("style-1 style-2", 1.4)]


def test_a_range_needs_a_word_before_it() -> None:
    assert parse_prompt("-{0,2}").text == "-{0,2}"
    assert parse_prompt("a {0,2}").text == "a {0,2}"


def test_region_tokens_are_typed() -> None:
    parsed = parse_prompt(
        "base <region:0:64:256:512:2.5:0.1_TL:a (red:1.2) car+> <region:8:0:16:8:100:0:sky>"
    )
    assert parsed.text == "base  "
    assert parsed.regions == [
        Region(0, 64, 256, 512, 2.5, 0.1, "TL", "a (red:1.2) car", True),
        Region(8, 0, 16, 8, 100.0, 0.0, "TLBR", "sky", False),
    ]


def test_reseed_tokens_are_typed() -> None:
    parsed = parse_prompt("<reseed:0:0:64:64:-1>a<reseed:8:16:24:32:42>")
    assert parsed.text == "a"
    assert parsed.reseeds == [Reseed(0, 0, 64, 64, -1), Reseed(8, 16, 24, 32, 42)]


@pytest.mark.parametrize(
    ("prompt", "position", "rule"),
    [
        ("a (cat:1.2", 10, "expected ')' after the weight"),
        ("a (cat", 2, "'(' is never closed"),
        ("a [cat", 2, "'[' is never closed"),
        ("a cat)", 5, "')' has no matching '('"),
        ("cat]", 3, "']' has no matching '['"),
        ("(a]", 2, "expected ')' for the '(' at character 0"),
        ("(cat:)", 5, "expected a weight"),
        ("(cat:x)", 5, "expected a weight"),
        ("(cat:1.2.3)", 8, "expected ')' after the weight"),
        ("(cat:1e999)", 5, "from -100 to 100"),
        ("(cat:1e308)", 5, "from -100 to 100"),
        ("(cat:-101)", 5, "from -100 to 100"),
        ("<lora:x:1e308>", 8, "weight must be from -10 to 10"),
        ("<inversion:x:-10.5>", 13, "weight must be from -10 to 10"),
        ("(a: b:1.2)", 4, "expected a weight"),
        ("a <lora:x", 2, "'<lora:' is never closed"),
        ("<lora:details>", 13, "expected <lora:NAME:WEIGHT>"),
        ("<lora:a:b:1>", 9, "expected <lora:NAME:WEIGHT>"),
        ("<lora:x:1.2.3>", 8, "weight must be a number"),
        ("<inversion: :1>", 11, "needs a name"),
        ("<embeddings:x:>", 14, "weight must be a number"),
        ("<clip:skip:a>", 11, "CLIP skip must be a whole number"),
        ("<clip:layers:2>", 6, "expected <clip:skip:N>"),
        ("<region:0:0:8:8:1:0>", 19, "expected <region:"),
        ("<region:0:0:8:x:1:0:a>", 14, "coordinate"),
        ("<region:0:0:8:8:y:0:a>", 16, "strength must be a number"),
        ("<region:0:0:8:8:1:0_Q:a>", 18, "feather"),
        ("<region:0:0:8:8:1:0: + >", 20, "a region needs a prompt"),
        ("<region:0:0:8:8:1:0:a (b>", 22, "'(' is never closed"),
        ("<reseed:0:0:8:8>", 15, "expected <reseed:"),
        ("<reseed:0:0:8:8:-2>", 16, "seed must be an integer"),
        ("<reseed:0:0:8:8:4294967296>", 16, "seed must be an integer"),
        ("x-{5,0}", 2, "end must be greater"),
        ("x-{0,5,0}", 2, "step must be at least 1"),
        ("x-{0,999999}", 2, "at most 256"),
        ("(" * (MAX_DEPTH + 2), MAX_DEPTH, "nest at most"),
    ],
)
def test_mistakes_are_refused_with_their_position(prompt: str, position: int, rule: str) -> None:
    with pytest.raises(PromptSyntaxError) as caught:
        parse_prompt(prompt)
    assert caught.value.position == position, caught.value
    assert rule in caught.value.rule
    assert str(caught.value).endswith(f"at character {position}")
    assert isinstance(caught.value, ValueError)


def test_stage_errors_are_placed_in_the_whole_prompt() -> None:
    assert [stage.text for stage in parse_stages("a (b) || c")] == ["a b ", " c"]
    with pytest.raises(PromptSyntaxError) as caught:
        parse_stages("a cat || a (dog")
    assert caught.value.position == 11
    with pytest.raises(PromptSyntaxError) as crossing:
        parse_stages("(a || b)")
    assert crossing.value.position == 0


def test_a_prompt_read_again_is_parsed_once() -> None:
    prompt = "a (cat:1.2) <lora:demo:0.5> || a dog " + "x" * 20_000
    first = parse_stages(prompt)
    assert parse_stages(prompt) is first
    assert parse_stages(prompt + " ") is not first
    with pytest.raises(PromptSyntaxError):
        parse_stages("a (dog")
    with pytest.raises(PromptSyntaxError):  # a mistake is not remembered as a result
        parse_stages("a (dog")


# -- properties ------------------------------------------------------------------------------

SPECIAL = "()[]<>:\\{}|,-_ 0123456789.+"
KEYWORDS = ["<lora:", "<inversion:", "<embeddings:", "<clip:skip:", "<region:", "<reseed:", "-{", "_TL"]


PIECES = st.one_of(st.text(alphabet=SPECIAL + "abcxyz", max_size=6), st.sampled_from(KEYWORDS))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.lists(PIECES, max_size=25).map("".join)))
def test_any_text_parses_or_is_a_prompt_syntax_error(prompt: str) -> None:
    try:
        stages = parse_stages(prompt)
    except PromptSyntaxError as err:
        assert 0 <= err.position <= len(prompt)
    else:
        assert len(stages) == len(prompt.split("||"))


_ESCAPE = str.maketrans({char: "\\" + char for char in ESCAPABLE})


def render(parsed: ParsedPrompt) -> str:
    """A prompt text for ``parsed``: every span an explicit weight, then the tokens."""
    parts = [f"({span.text.translate(_ESCAPE)}:{span.weight!r})" for span in parsed.spans]
    parts += [f"<lora:{net.name}:{net.weight!r}>" for net in parsed.loras]
    parts += [f"<inversion:{net.name}:{net.weight!r}>" for net in parsed.inversions]
    if parsed.clip_skip:
        parts.append(f"<clip:skip:{parsed.clip_skip}>")
    parts += [
        f"<region:{r.top}:{r.left}:{r.bottom}:{r.right}:{r.strength!r}:{r.feather!r}_{r.edges}:"
        f"{r.prompt}{'+' if r.append_base else ''}>"
        for r in parsed.regions
    ]
    parts += [f"<reseed:{r.top}:{r.left}:{r.bottom}:{r.right}:{r.seed}>" for r in parsed.reseeds]
    return "".join(parts)


WORDS = st.text(alphabet="abc xyz,.-_!|", min_size=1, max_size=8)
ESCAPES = st.sampled_from([r"\(", r"\)", r"\[", r"\]", r"\\", r"\:", r"\<", r"\{", "\\n"])
WEIGHT = st.floats(min_value=-3, max_value=3, allow_nan=False).map(lambda value: f"{value:.3g}")
NAME = st.text(alphabet="abc XYZ-_.", min_size=1, max_size=6).filter(str.strip)
INTEGER = st.integers(min_value=0, max_value=4096)
TOKENS = st.one_of(
    st.builds(
        lambda kind, name, weight: f"<{kind}:{name}:{weight}>",
        st.sampled_from(["lora", "inversion", "embeddings"]),
        NAME,
        WEIGHT,
    ),
    st.builds(lambda skip: f"<clip:skip:{skip}>", st.integers(0, 12)),
    st.builds(
        lambda box, strength, feather, edges, prompt, plus: (
            f"<region:{':'.join(map(str, box))}:{strength}:{feather}{edges}:{prompt}{plus}>"
        ),
        st.tuples(INTEGER, INTEGER, INTEGER, INTEGER),
        WEIGHT,
        st.sampled_from(["0", "0.1", ".25", "0.5"]),
        st.sampled_from(["", "_T", "_LR", "_TLBR"]),
        st.sampled_from(["sky", "a (red:1.2) car", "[dim] light", "x\\: y"]),
        st.sampled_from(["", "+"]),
    ),
    st.builds(
        lambda box, seed: f"<reseed:{':'.join(map(str, box))}:{seed}>",
        st.tuples(INTEGER, INTEGER, INTEGER, INTEGER),
        st.integers(-1, 2**32 - 1),
    ),
    st.builds(
        lambda name, start, count: f" {name}-{{{start},{start + count}}}",
        st.sampled_from(["emb", "bad-hands"]),
        st.integers(0, 5),
        st.integers(1, 4),
    ),
)


def groups(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    items = st.lists(inner, min_size=1, max_size=4).map("".join)
    return st.one_of(
        items.map(lambda text: f"({text})"),
        items.map(lambda text: f"[{text}]"),
        st.builds(lambda text, weight: f"({text}:{weight})", items, WEIGHT),
    )


PROMPTS = st.lists(st.recursive(st.one_of(WORDS, ESCAPES, TOKENS), groups, max_leaves=12), max_size=8).map(
    "".join
)


@settings(max_examples=300, deadline=None)
@given(PROMPTS)
def test_well_formed_prompts_round_trip_through_their_structure(prompt: str) -> None:
    parsed = parse_prompt(prompt)
    assert parse_prompt(render(parsed)) == parsed


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=4), WEIGHT, st.integers(0, 3))
def test_nesting_multiplies_weights(words: list[str], weight: str, depth: int) -> None:
    text = "".join(words)
    prompt = "(" * depth + f"({text.translate(_ESCAPE)}:{weight})" + ")" * depth
    [span] = parse_prompt(prompt).spans
    assert span.text == text
    assert span.weight == pytest.approx(float(weight) * 1.1**depth)


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        (
            "<region:0:0:64:520:2:0:a>",
            "region 'a': the rectangle (0, 0, 64, 520) is outside the 512x256 image",
        ),
        ("<region:0:0:64:64:2:0.75:a>", "region 'a': feather must be from 0 to 0.5, got 0.75"),
        ("<region:0:0:64:64:-1:0:a>", "region 'a': strength must be >= 0, got -1"),
        ("<reseed:64:0:64:64:7>", "reseed 7: bottom and right must be greater than top and left"),
        ("<reseed:0:4:64:64:7>", "reseed 7: top, left, bottom and right must be multiples of 8"),
    ],
)
def test_areas_that_do_not_fit_the_image_are_named(prompt: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_areas(parse_prompt(prompt), 512, 256)
    assert str(caught.value).startswith(problem)


def test_areas_inside_the_image_pass() -> None:
    check_areas(parse_prompt("<region:0:0:256:512:100:0.5_LR:a+> <reseed:8:8:16:16:-1>"), 512, 256)

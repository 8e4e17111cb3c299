"""Wildcard loading (contract §11.3) and expansion (§9.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.diffusion.wildcards import MAX_WILDCARD_REPLACEMENTS, expand_wildcards, load_wildcards


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_text_files_are_read_recursively_without_comments_or_blanks(tmp_path: Path) -> None:
    write(tmp_path / "animals.txt", "# a comment\n cat \n\ndog\n")
    write(tmp_path / "colors" / "warm.txt", "red\norange\n")

    assert load_wildcards(tmp_path) == {"animals": ("cat", "dog"), "colors/warm": ("red", "orange")}


def test_files_with_the_same_name_concatenate(tmp_path: Path) -> None:
    write(tmp_path / "people.txt", "baker\n")
    write(tmp_path / "people.yaml", "jobs: [nurse]\n")
    write(tmp_path / "people" / "jobs.txt", "pilot\n")

    assert load_wildcards(tmp_path)["people/jobs"] == ("pilot", "nurse")


def test_structured_files_give_one_list_per_nested_key(tmp_path: Path) -> None:
    write(tmp_path / "places.json", '{"city": ["paris", "rome"], "nature": {"water": ["lake"], "bad": 3}}')
    write(tmp_path / "sub" / "moods.yml", "happy:\n  - glad\n  - merry\nmixed: [a, 1]\n")

    assert load_wildcards(tmp_path) == {
        "places/city": ("paris", "rome"),
        "places/nature/water": ("lake",),
        "sub/moods/happy": ("glad", "merry"),
    }


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "broken.json", "{not json")
    write(tmp_path / "list.yaml", "- a\n- b\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    write(tmp_path / "ok.txt", "fine\n")

    assert load_wildcards(tmp_path) == {"ok": ("fine",)}


def test_a_missing_folder_has_no_wildcards(tmp_path: Path) -> None:
    assert load_wildcards(tmp_path / "nope") == {}


def test_expansion_is_seeded_and_draws_without_replacement() -> None:
    wildcards = {"color": ("red", "green", "blue")}
    text = "__color__, __color__ and __color__"

    first = expand_wildcards(text, wildcards, 42)

    assert first == expand_wildcards(text, wildcards, 42)
    assert sorted(first.replace(" and ", ", ").split(", ")) == ["blue", "green", "red"]
    assert {expand_wildcards("__color__", wildcards, seed) for seed in range(30)} == {"red", "green", "blue"}


def test_repeated_draws_from_one_list_pick_what_onnx_web_picks_for_the_seed() -> None:
    """onnx-web's ``pop_random`` swaps the chosen entry with the last one and pops the last.

    ``Random(7).randrange`` gives 5, 2, 6 for pools of 10, 9, 8. Over ``0…9``: index 5 takes ``5``
    and moves ``9`` there; index 2 takes ``2`` and moves ``8`` there; index 6 still holds ``6``.
    Popping at the index instead would shift ``7, 8, 9`` down and take ``8`` third.
    """
    wildcards = {"n": tuple(str(i) for i in range(10))}

    assert expand_wildcards("__n__ __n__ __n__", wildcards, 7) == "5 2 6"


def test_an_entry_naming_another_wildcard_expands_before_the_wildcards_after_it() -> None:
    """The text is searched again from its start after each replacement, as in onnx-web.

    ``Random(4).randrange`` gives 0, 1, 0 for pools of 1, 2, 1: ``__animal__`` becomes
    ``__color__ cat``, whose ``__color__`` is drawn next and takes ``blue``, leaving ``red`` for the
    ``__color__`` that was in the prompt.
    """
    wildcards = {"animal": ("__color__ cat",), "color": ("red", "blue")}

    assert expand_wildcards("__animal__ and __color__", wildcards, 4) == "blue cat and red"


def test_a_list_naming_itself_ends_when_its_entries_run_out() -> None:
    with pytest.raises(ValueError, match="__loop__ is used more often than its 1 entries"):
        expand_wildcards("__loop__", {"loop": ("again __loop__",)}, 0)


def test_expansion_stops_with_an_error_after_the_replacement_limit() -> None:
    growing = {"grow": ("x __grow__",) * (MAX_WILDCARD_REPLACEMENTS + 10)}

    with pytest.raises(ValueError, match=f"more than {MAX_WILDCARD_REPLACEMENTS} replacements"):
        expand_wildcards("__grow__", growing, 0)


def test_a_text_may_use_the_replacement_limit_in_full() -> None:
    text = "__nope__" * MAX_WILDCARD_REPLACEMENTS

    assert expand_wildcards(text, {}, 0) == ""
    with pytest.raises(ValueError, match="replacements"):
        expand_wildcards(text + "__nope__", {}, 0)


def test_unknown_wildcards_become_empty_and_other_text_stays() -> None:
    assert expand_wildcards("a __nope__ b __ c", {}, 1) == "a  b __ c"


def test_nested_names_accept_either_separator() -> None:
    wildcards = {"colors/warm": ("red", "orange")}

    assert sorted(expand_wildcards("__colors/warm__ __colors\\warm__", wildcards, 3).split()) == [
        "orange",
        "red",
    ]


def test_adjacent_wildcards_are_two_names() -> None:
    assert expand_wildcards("__a____b__", {"a": ("x",), "b": ("y",)}, 0) == "xy"


def test_exhausting_a_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="__color__ is used more often than its 1 entries"):
        expand_wildcards("__color__ __color__", {"color": ("red",)}, 0)

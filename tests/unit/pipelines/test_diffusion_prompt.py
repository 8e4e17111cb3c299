"""Prompt tokens, prompt stages and CLIP windows."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.diffusion.model import DiffusionModel, encode_text
from pipelines.diffusion.prompt import Network, pad_windows, parse_prompt, prompt_stage, token_windows


def test_parse_prompt_strips_and_records_network_tokens() -> None:
    parsed = parse_prompt(
        "a cat <lora:details:0.5>, <inversion:autumn:1> <embeddings:bad-hands:-.3> <lora:x y:2>"
    )
    assert parsed.text == "a cat ,   "
    assert parsed.loras == [Network("details", 0.5), Network("x y", 2.0)]
    assert parsed.inversions == [Network("autumn", 1.0), Network("bad-hands", -0.3)]
    assert parsed.clip_skip == 0


def test_first_clip_skip_wins_and_is_removed() -> None:
    parsed = parse_prompt("<clip:skip:2>a cat<clip:skip:3>")
    assert parsed.text == "a cat"
    assert parsed.clip_skip == 2


@pytest.mark.parametrize(
    "text", ["a <lora:details> cat", "<lora:a:b:1>", "<lora:x:1.2.3>", "a <b> c", "2 > 1 < 3"]
)
def test_malformed_tokens_stay_in_the_prompt(text: str) -> None:
    parsed = parse_prompt(text)
    assert parsed.text == text
    assert parsed.loras == []


@pytest.mark.parametrize(
    ("index", "expected"), [(0, "a cat"), (1, "a dog"), (2, "a bird, detailed"), (9, "a bird, detailed")]
)
def test_prompt_stage_picks_a_part_and_clamps_to_the_last(index: int, expected: str) -> None:
    assert prompt_stage("a cat || a dog ||a bird, detailed", index) == expected


def test_prompt_without_stages_is_its_own_stage() -> None:
    assert prompt_stage("a cat", 3) == "a cat"


def test_short_prompt_is_one_window_as_diffusers_tokenizes_it(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    windows = token_windows(tokenizer, "a photo of a cat")
    expected = tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert windows.shape == (1, 77)
    assert windows[0].tolist() == expected
    assert windows[0, -1] == tokenizer.pad_token_id


def test_long_prompt_is_split_into_wrapped_windows(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    words = ["cat"] * 100 + ["dog"] * 60
    ids = tokenizer(" ".join(words), add_special_tokens=False, verbose=False).input_ids
    assert len(ids) == 160
    windows = token_windows(tokenizer, " ".join(words))
    assert windows.shape == (3, 77)
    assert (windows[:, 0] == tokenizer.bos_token_id).all()
    assert windows[0, 1:76].tolist() == ids[:75]
    assert windows[1, 1:76].tolist() == ids[75:150]
    assert windows[2, 1:11].tolist() == ids[150:]
    assert windows[2, 11] == tokenizer.eos_token_id
    assert (windows[2, 12:] == tokenizer.pad_token_id).all()


def test_first_window_of_a_long_prompt_encodes_like_its_truncation(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    words = ["cat"] * 80
    long_embeds = encode_text(demo_model, token_windows(tokenizer, " ".join(words)))
    truncated = encode_text(demo_model, token_windows(tokenizer, " ".join(words[:75])))
    assert long_embeds.shape == (1, 154, 32)
    np.testing.assert_allclose(long_embeds[:, :77], truncated, atol=1e-5)


def test_pad_windows_appends_empty_prompt_windows(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    windows = token_windows(tokenizer, "blurry")
    padded = pad_windows(tokenizer, windows, 3)
    assert padded.shape == (3, 77)
    assert np.array_equal(padded[0], windows[0])
    assert np.array_equal(padded[1], token_windows(tokenizer, "")[0])
    assert pad_windows(tokenizer, padded, 2) is padded


def test_demo_tokenizer_keeps_common_words_whole(demo_model: DiffusionModel) -> None:
    tokens = demo_model.tokenizer.tokenize("A beautiful portrait of a knight, highly detailed")
    assert tokens == [
        "a</w>",
        "beautiful</w>",
        "portrait</w>",
        "of</w>",
        "a</w>",
        "knight</w>",
        ",</w>",
        "highly</w>",
        "detailed</w>",
    ]
    # Words outside the list still tokenize, down to bytes.
    assert "".join(demo_model.tokenizer.tokenize("Zyxwv")).replace("</w>", "") == "zyxwv"

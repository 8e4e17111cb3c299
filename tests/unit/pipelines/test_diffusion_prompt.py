"""Prompt tokens, prompt stages and CLIP windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.diffusion import sdxl
from pipelines.diffusion.model import DiffusionModel, encode_prompt, encode_text, load_model
from pipelines.diffusion.prompt import (
    MAX_ALTERNATIVES,
    Network,
    PromptSyntaxError,
    expand_alternatives,
    pad_windows,
    parse_prompt,
    prompt_stage,
    prompt_windows,
    token_windows,
    weight_embeddings,
)
from pipelines.models.demo import DEMO_SDXL
from pipelines.models.sessions import SessionCache
from tests.unit.pipelines.reference import demo_generation


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


@pytest.mark.parametrize("text", ["a <b> c", "2 > 1 < 3"])
def test_angle_brackets_that_are_no_token_stay_in_the_prompt(text: str) -> None:
    parsed = parse_prompt(text)
    assert parsed.text == text
    assert parsed.loras == []


@pytest.mark.parametrize("text", ["a <lora:details> cat", "<lora:a:b:1>", "<lora:x:1.2.3>"])
def test_malformed_network_tokens_are_refused(text: str) -> None:
    with pytest.raises(PromptSyntaxError):
        parse_prompt(text)


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


# -- weighting (lpw) --------------------------------------------------------------------------


def test_an_unweighted_prompt_encodes_exactly_as_before(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    text = "a photo of a cat, detailed"
    windows = prompt_windows(tokenizer, parse_prompt(text).spans)
    expected = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert windows.ids[0].tolist() == expected
    assert (windows.weights == 1.0).all()
    gen = demo_generation(prompt=text, negative_prompt="blurry")
    embeds = encode_prompt(demo_model, parse_prompt(text).spans, parse_prompt("blurry").spans, gen)
    plain = [encode_text(demo_model, token_windows(tokenizer, item)) for item in ("blurry", text)]
    assert np.array_equal(embeds, np.concatenate([np.repeat(item, gen.batch, 0) for item in plain]))


def scaled_tokens(weighted: np.ndarray, plain: np.ndarray) -> tuple[float, np.ndarray]:
    """The one factor the tokens of ``weighted`` share most with ``plain``, and each token's own.

    Each token's factor is its least-squares ratio to the plain embedding; a token unweighted
    before the rescale has exactly the common factor.
    """
    ratios = (weighted * plain).sum(-1) / (plain * plain).sum(-1)
    return float(np.median(ratios)), ratios[0]


def test_weight_embeddings_restores_the_mean_and_scales_each_token() -> None:
    rng = np.random.default_rng(3)
    plain = (rng.standard_normal((1, 154, 16)) + 0.5).astype(np.float32)
    weights = np.ones((2, 77), dtype=np.float32)
    weights[1, 10:13] = 1.5
    weighted = weight_embeddings(plain, weights)
    assert weighted.dtype == np.float32
    assert weighted.mean(dtype=np.float64) == pytest.approx(plain.mean(dtype=np.float64), rel=1e-6)
    common, ratios = scaled_tokens(weighted, plain)
    assert common < 1.0
    np.testing.assert_allclose(np.delete(ratios, [87, 88, 89]), common, rtol=1e-5)
    np.testing.assert_allclose(ratios[87:90], 1.5 * common, rtol=1e-5)
    assert weight_embeddings(plain, np.ones((2, 77), dtype=np.float32)) is plain


def test_a_mean_that_is_rounding_noise_is_not_rescaled_to() -> None:
    rng = np.random.default_rng(4)
    plain = rng.standard_normal((1, 77, 16)).astype(np.float32)
    plain -= plain.mean(axis=-1, keepdims=True)  # LayerNorm without bias: every token centred
    weights = np.ones((1, 77), dtype=np.float32)
    weights[0, 5] = 2.0
    np.testing.assert_array_equal(weight_embeddings(plain, weights), plain * weights[..., None])


def test_a_weight_scales_exactly_its_words_tokens_before_the_mean_rescale(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    parsed = parse_prompt("a photo of a (cat:1.5), detailed")
    assert parsed.text == "a photo of a cat, detailed"
    windows = prompt_windows(tokenizer, parsed.spans)
    tokens = tokenizer.convert_ids_to_tokens(windows.ids[0].tolist())
    # bos, a, photo, of, a, cat, ",", detailed, eos, padding...
    assert tokens[5] == "cat</w>"
    assert windows.weights[0, 5] == 1.5
    assert (np.delete(windows.weights[0], 5) == 1.0).all()
    assert windows.ids.tolist() == token_windows(tokenizer, parsed.text).tolist()
    plain = encode_text(demo_model, windows.ids)
    gen = demo_generation(prompt=parsed.text, cfg=1.0)
    weighted = encode_prompt(demo_model, parsed.spans, None, gen)[:1]
    common, ratios = scaled_tokens(weighted, plain)
    np.testing.assert_allclose(np.delete(ratios, 5), common, rtol=1e-5)
    assert ratios[5] == pytest.approx(1.5 * common, rel=1e-5)


def test_a_long_weighted_prompt_keeps_its_weights_across_windows(demo_model: DiffusionModel) -> None:
    tokenizer = demo_model.tokenizer
    parsed = parse_prompt("cat " * 100 + "(dog:1.3) " + "[bird] " * 99)
    windows = prompt_windows(tokenizer, parsed.spans)
    assert windows.ids.shape == (3, 77)
    # Token 100 (the dog) is the 26th of the second window, after its bos.
    assert windows.weights[1, 26] == pytest.approx(1.3)
    assert tokenizer.convert_ids_to_tokens(int(windows.ids[1, 26])) == "dog</w>"
    assert (windows.weights[0] == 1.0).all()
    assert windows.weights[2, 1:51] == pytest.approx(1 / 1.1)
    assert (windows.weights[2, 51:] == 1.0).all()
    gen = demo_generation(prompt=parsed.text, negative_prompt="blurry")
    embeds = encode_prompt(demo_model, parsed.spans, parse_prompt("blurry").spans, gen)
    assert embeds.shape == (2 * gen.batch, 3 * 77, 32)
    common, ratios = scaled_tokens(embeds[gen.batch : gen.batch + 1], encode_text(demo_model, windows.ids))
    np.testing.assert_allclose(ratios, windows.weights.reshape(-1) * common, rtol=1e-5)
    negative = encode_text(demo_model, pad_windows(tokenizer, token_windows(tokenizer, "blurry"), 3))
    np.testing.assert_array_equal(embeds[0], negative[0])


def test_sdxl_weights_both_encoders_hidden_states_but_not_the_pooled_output(
    models_path: Path, sessions: SessionCache
) -> None:
    model = load_model(models_path, DEMO_SDXL, sessions)
    spans = parse_prompt("a photo of a (cat:1.5)").spans
    hidden_parts = []
    for component, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        windows = prompt_windows(model.tokenizer_of(tokenizer), spans, truncate=True)
        assert np.flatnonzero(windows.weights[0] != 1.0).tolist() == [5]
        plain, first = sdxl.encode_text(model, component, windows.ids)
        ours, our_first = sdxl.encode_weighted(model, component, tokenizer, spans)
        assert np.array_equal(our_first, first)
        weights = windows.weights[..., None]
        scale = plain.mean(dtype=np.float64) / (plain * weights).mean(dtype=np.float64)
        np.testing.assert_allclose(ours, plain * weights * scale, rtol=1e-5, atol=1e-6)
        assert not np.allclose(ours, plain)
        hidden_parts.append(ours)
    hidden, pooled = sdxl.encode_prompts(model, spans)
    assert np.array_equal(hidden, np.concatenate(hidden_parts, axis=-1))
    plain_hidden, plain_pooled = sdxl.encode_prompts(model, "a photo of a cat")
    assert np.array_equal(pooled, plain_pooled)
    unweighted_hidden, _ = sdxl.encode_prompts(model, parse_prompt("a photo of a cat").spans)
    assert np.array_equal(unweighted_hidden, plain_hidden)


def test_sdxl_truncates_a_long_weighted_prompt_to_one_window(demo_model: DiffusionModel) -> None:
    parsed = parse_prompt("cat " * 70 + "(dog:1.3) " * 10)
    windows = prompt_windows(demo_model.tokenizer, parsed.spans, truncate=True)
    assert windows.ids.shape == windows.weights.shape == (1, 77)
    assert (windows.weights[0, 71:76] == np.float32(1.3)).all() and windows.weights[0, 76] == 1.0


@pytest.mark.parametrize(
    ("prompt", "expanded"),
    [
        ("a cat on a mat", ["a cat on a mat"]),
        # onnx-web's cycle: prompt i takes option i % n of each group, as many as the largest group.
        (
            "a (cat|dog|fox) on a (red|blue) mat",
            ["a cat on a red mat", "a dog on a blue mat", "a fox on a red mat"],
        ),
        # Parentheses without | are weights here; an inner group is an option inside its weight.
        ("a (cat:1.2) on ((red|blue) mat)", ["a (cat:1.2) on (red mat)", "a (cat:1.2) on (blue mat)"]),
        ("((cat|dog):1.3)", ["(cat:1.3)", "(dog:1.3)"]),
        (r"a \(cat|dog\)", [r"a \(cat|dog\)"]),
        ("(a|)", ["a", ""]),
    ],
)
def test_alternatives_expand_into_the_prompts_onnx_web_cycles(prompt: str, expanded: list[str]) -> None:
    assert expand_alternatives(prompt) == expanded


def test_alternatives_make_at_most_their_cap_of_prompts() -> None:
    many = "(" + "|".join(f"option {index}" for index in range(500)) + ")"
    assert len(expand_alternatives(many)) == MAX_ALTERNATIVES

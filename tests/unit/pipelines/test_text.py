"""The text models: the GPT-2 export against transformers, the sampling loop, and the stages
``text-generate``, ``text-prompt`` and ``edit-safety`` on the tiny random demo weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GPT2LMHeadModel, TopKLogitsWarper, TopPLogitsWarper

from pipelines.context import StageImage, StageText
from pipelines.models.sessions import SessionCache, SessionSettings
from pipelines.safety import SafetySpec, classify
from pipelines.stages import edit_safety, text_generate, text_prompt
from pipelines.text.demo import DEMO_SAFETY_MODEL, DEMO_TEXT_MODEL, TORCH_SOURCE, build_demo_text_models
from pipelines.text.generate import Sampling, TextModel, next_token, top_k_filter, top_p_filter
from tests.unit.pipelines.contexts import stage_context

PROMPT = "a beautiful portrait of a cat, detailed oil painting"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text-models")
    build_demo_text_models(path)
    return path


@pytest.fixture(scope="module")
def model(models: Path) -> TextModel:
    return TextModel(
        models / DEMO_TEXT_MODEL, SessionCache(2, SessionSettings(providers=("CPUExecutionProvider",)))
    )


@pytest.fixture(scope="module")
def reference(models: Path) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(models / TORCH_SOURCE).eval()


def test_onnx_logits_equal_the_torch_model_with_and_without_past(
    model: TextModel, reference: GPT2LMHeadModel
) -> None:
    ids = model.encode(PROMPT)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)
    # Incrementally: the prompt but its last token, then the last token on the cached keys/values.
    _, past = model.step(ids[:-1], 0, model.empty_past())
    last, _ = model.step(ids[-1:], len(ids) - 1, past)
    np.testing.assert_allclose(last, expected[-1], atol=1e-4)


@pytest.mark.parametrize("prompt", [PROMPT, "dragon", ""])
def test_greedy_equals_transformers_generate(
    model: TextModel, reference: GPT2LMHeadModel, prompt: str
) -> None:
    generated = model.generate(prompt, Sampling(max_new_tokens=40, temperature=0))
    ids = generated.prompt_ids
    with torch.no_grad():
        output = reference.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
            do_sample=False,
            max_new_tokens=40,
            pad_token_id=reference.config.eos_token_id,
        )
    expected = output[0, len(ids) :].tolist()
    if expected and expected[-1] == reference.config.eos_token_id:
        expected = expected[:-1]
    assert generated.new_ids == expected
    assert len(set(expected)) > 1  # the demo weights do not repeat one token: the test sees choices
    # top_k=1 keeps only the most likely token: greedy whatever the temperature and seed.
    assert model.generate(prompt, Sampling(max_new_tokens=40, top_k=1, seed=9)).new_ids == expected


@pytest.mark.parametrize("top_k", [1, 5, 50, 299])
def test_top_k_equals_transformers_warper(top_k: int) -> None:
    logits = np.random.default_rng(top_k).normal(size=(3, 300)).astype(np.float32)
    expected = TopKLogitsWarper(top_k)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(top_k_filter(logits, top_k), expected)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_equals_transformers_warper(top_p: float) -> None:
    logits = (np.random.default_rng(int(top_p * 1000)).normal(size=(3, 300)) * 3).astype(np.float32)
    expected = TopPLogitsWarper(top_p)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(np.isinf(top_p_filter(logits, top_p)), np.isinf(expected))
    kept = ~np.isinf(expected)
    assert kept.sum(axis=-1).min() >= 1 and kept.sum() < kept.size


def test_sampling_draws_only_kept_tokens_and_follows_the_seed(model: TextModel) -> None:
    logits = np.random.default_rng(0).normal(size=300).astype(np.float32)
    allowed = set(np.argsort(logits)[-5:].tolist())
    rng = np.random.default_rng(1)
    drawn = {next_token(logits, Sampling(1, temperature=1.5, top_k=5), rng) for _ in range(200)}
    assert drawn <= allowed and len(drawn) > 1
    sampling = Sampling(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    first, again = model.generate(PROMPT, sampling), model.generate(PROMPT, sampling)
    other = model.generate(PROMPT, Sampling(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.95, seed=8))
    assert first == again and first.new_ids != other.new_ids


def test_generation_counts_tokens_and_stops_when_cancelled(model: TextModel) -> None:
    counted: list[int] = []
    result = model.generate(PROMPT, Sampling(max_new_tokens=12, seed=3), on_token=lambda: counted.append(1))
    assert len(counted) == len(result.new_ids) + (result.stop == "eos") and result.stop in ("eos", "length")

    class Stop(Exception):
        pass

    def cancel() -> None:
        if len(counted) >= 15:
            raise Stop

    with pytest.raises(Stop):
        model.generate(
            PROMPT,
            Sampling(max_new_tokens=50, temperature=0),
            on_token=lambda: counted.append(1),
            check_cancelled=cancel,
        )


def test_text_generate_stage_persists_the_text_with_its_metadata(models: Path) -> None:
    steps: list[int] = []
    texts: list[StageText] = []
    ctx = stage_context(steps=steps, models_path=models)
    ctx.persist_text = texts.extend
    params = {
        "text_model": DEMO_TEXT_MODEL,
        "prompt": PROMPT,
        "seed": 5,
        "max_tokens": 16,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
    }
    assert text_generate.run(ctx, params, []) == []
    (text,) = texts
    assert text.text.startswith(PROMPT) and text.metadata["text"] == text.text
    assert text.metadata["params"]["seed"] == 5 and text.metadata["params"]["top_k"] == 40
    assert (
        text.metadata["models"][0]["name"] == DEMO_TEXT_MODEL
        and text.metadata["models"][0]["hash"] != "unknown"
    )
    assert sum(steps) == text.metadata["generation"]["new_tokens"] + (
        text.metadata["generation"]["stop"] == "eos"
    )


def test_text_prompt_expands_each_part_and_carries_the_prompt(models: Path) -> None:
    ctx = stage_context(models_path=models)
    params = {
        "prompt_filter": DEMO_TEXT_MODEL,
        "prompt": "a cat || a dog",
        "seed": 1,
        "min_length": 40,
        "remove_tokens": "[^ -~]",
        "add_suffix": "best quality",
        "max_tokens": 24,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }
    image = StageImage(Image.new("RGB", (8, 8)), {})
    assert text_prompt.run(ctx, params, [image]) == [image]
    first, second = ctx.carry["prompt"]["a cat || a dog"].split(" || ")
    assert first.startswith("a cat") and second.startswith("a dog")
    assert first.endswith(", best quality") and len(first) > len("a cat, best quality")
    assert all(" " <= char <= "~" for char in first + second)  # remove_tokens took out the rest
    again = stage_context(models_path=models)
    text_prompt.run(again, params, [])
    assert again.carry["prompt"] == ctx.carry["prompt"]  # the seed decides the prompt


def test_text_prompt_expands_the_prompt_of_later_stages_that_inherit_it_only(
    models_path: Path,
) -> None:
    from pipelines.chain import run_chain
    from pipelines.models.demo import DEMO_MODELS
    from pipelines.stages import source_txt2img
    from tests.unit.pipelines.resolved import IMAGE

    prompt = "a cat"
    expand = {
        "prompt_filter": DEMO_TEXT_MODEL,
        "prompt": prompt,
        "seed": 1,
        "min_length": 40,
        "remove_tokens": "",
        "add_suffix": "",
        "max_tokens": 24,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }

    def cell(name: str, cell_prompt: str) -> dict[str, Any]:
        raw = {**IMAGE, "model": DEMO_MODELS[0].name, "prompt": cell_prompt, "width": 64, "height": 64}
        raw.update(steps=1, input_prompt=cell_prompt)
        params = {**raw, **source_txt2img.STAGE.resolve(raw)}
        return {"name": name, "type": "source-txt2img", "params": params, "tiles": 8192}

    stages = [
        {"name": "words", "type": "text-prompt", "params": expand, "tiles": 8192},
        cell("inherits", prompt),
        cell("own", "a red dog"),
    ]
    sessions = SessionCache(4, SessionSettings(providers=("CPUExecutionProvider",)))
    result = run_chain({"stages": stages}, models_path=models_path, sessions=sessions)
    inherited, own = (output.metadata["params"] for output in result.outputs)
    # The stage that used the prompt it expanded runs the expanded one; a grid cell's own stays.
    # (The demo models' folder holds the demo text model too.)
    assert inherited["prompt"].startswith(prompt) and len(inherited["prompt"]) >= 40
    assert inherited["input_prompt"] == prompt
    assert own["prompt"] == "a red dog"


def test_a_second_text_prompt_lengthens_what_the_first_made_for_the_stages_after_both(models: Path) -> None:
    ctx = stage_context(models_path=models)
    params = {
        "prompt_filter": DEMO_TEXT_MODEL,
        "seed": 1,
        "remove_tokens": "",
        "add_suffix": "",
        "max_tokens": 8,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }
    text_prompt.run(ctx, {**params, "prompt": "a cat", "min_length": 20}, [])
    first = ctx.carry["prompt"]["a cat"]
    # The chain hands the second stage the first's prompt, as it hands it to every later stage.
    text_prompt.run(ctx, {**params, "prompt": first, "min_length": len(first) + 20}, [])
    second = ctx.carry["prompt"][first]
    assert second.startswith(first) and len(second) > len(first)
    assert ctx.carry["prompt"]["a cat"] == second


def test_decoded_text_has_no_nul_characters_postgres_could_not_store(model: TextModel) -> None:
    assert model.decode(model.tokenizer.encode("a\x00cat")) == "acat"


def test_text_prompt_takes_the_prompt_grammar_out_of_what_the_model_writes() -> None:
    from pipelines.diffusion.prompt import parse_prompt

    params = {"min_length": 30, "remove_tokens": "", "add_suffix": "", "seed": 0}
    written = " (a dark] castle <lora:x:1> |under {0,3} stars\\"
    expanded = text_prompt.expand_prompt("a (red:1.2) cat", params, lambda part, seed: written)
    # The user's own weights stay; what the model wrote is words the later stages can parse.
    assert expanded == "a (red:1.2) cat a dark castle lora:x:1 under 0,3 stars"
    parse_prompt(expanded)


def test_text_prompt_leaves_long_enough_parts_alone() -> None:
    params = {"min_length": 5, "remove_tokens": "", "add_suffix": "", "seed": 0}
    assert text_prompt.expand_prompt("already long || x", params, lambda part, seed: " more words") == (
        "already long || x more words"
    )


def test_safety_classifier_flags_by_threshold_and_hides_flagged_images(models: Path) -> None:
    folder = models / DEMO_SAFETY_MODEL
    spec = SafetySpec.read(folder)
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 200, 30))]
    ctx = stage_context(models_path=models)
    scores = classify(ctx.sessions.get(folder / "model.onnx"), images, spec)
    assert scores.shape == (2, 2) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    items = [StageImage(image, {"params": {"prompt": "x"}}) for image in images]
    # Between the two scores: one image flagged and blacked out, the other untouched.
    threshold = float(scores[:, 1].mean())
    params = {"safety_model": DEMO_SAFETY_MODEL, "threshold": threshold, "action": "black"}
    checked = edit_safety.run(ctx, params, items)
    flagged = [item.metadata["safety"]["flagged"] for item in checked]
    assert flagged == [bool(score >= threshold) for score in scores[:, 1]] and sum(flagged) == 1
    for item, original, was_flagged in zip(checked, images, flagged, strict=True):
        assert item.image.size == original.size
        assert (item.image.getextrema() == ((0, 0),) * 3) == was_flagged
        assert item.metadata["safety"]["action"] == ("black" if was_flagged else "none")
    blurred = edit_safety.run(ctx, {**params, "threshold": 0.0, "action": "blur"}, items)
    assert all(item.metadata["safety"]["flagged"] for item in blurred)
    assert blurred[0].image.getextrema() != ((0, 0),) * 3
    marked = edit_safety.run(ctx, {**params, "threshold": 0.0, "action": "mark"}, items)
    assert [item.metadata["safety"]["action"] for item in marked] == ["mark", "mark"]
    assert [item.image for item in marked] == images  # recorded, not hidden


def test_a_csam_label_over_the_threshold_fails_the_stage(models: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "safety" / "labels"
    shutil.copytree(models / DEMO_SAFETY_MODEL, folder)
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"nsfw"', '"csam"'))
    ctx = stage_context(models_path=tmp_path)
    item = StageImage(Image.new("RGB", (16, 16)), {})
    with pytest.raises(edit_safety.SafetyBlocked):
        edit_safety.run(ctx, {"safety_model": "safety/labels", "threshold": 0.0, "action": "black"}, [item])


@pytest.mark.parametrize("inverse_layer_scale", [False, True])
def test_convert_command_exports_a_gpt2_folder_that_matches_torch(
    models: Path, tmp_path: Path, inverse_layer_scale: bool
) -> None:
    """``onnx-web convert text`` on a transformers folder; config options real checkpoints use hold."""
    import argparse

    from pipelines.models.cli import add_convert_arguments, run_convert

    source = tmp_path / "checkpoint"
    original = GPT2LMHeadModel.from_pretrained(models / TORCH_SOURCE)
    original.config.scale_attn_by_inverse_layer_idx = inverse_layer_scale
    original.save_pretrained(source)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (source / name).write_bytes((models / TORCH_SOURCE / name).read_bytes())
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser.add_subparsers(dest="command"))
    assert (
        run_convert(
            parser.parse_args(["convert", "text", str(source), "promptgen", "--models", str(tmp_path)])
        )
        == 0
    )
    converted = TextModel(tmp_path / "text" / "promptgen", SessionCache(1))
    ids = converted.encode(PROMPT)
    reference = GPT2LMHeadModel.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(converted.logits(ids), expected, atol=1e-4)
    assert (tmp_path / "text" / "promptgen" / "hash.txt").read_text().strip()

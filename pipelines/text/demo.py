"""The demo text models: a tiny random-weight GPT-2 and a tiny random-weight safety classifier.

Like the demo diffusion models (``pipelines.models.demo``) they have the real architectures and
take the real conversion path (``convert_gpt2_folder``, ``export_safety_classifier``), built from
fixed seeds in a second or two; their outputs are noise, their shapes and numerics are real.

The GPT-2 tokenizer is a byte-level BPE tokenizer in GPT-2's layout (the 256 byte symbols, merged
symbols, ``<|endoftext|>`` last), its merges learned here from a short word list, so any text
tokenizes (down to single bytes) and common prompt words are single tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pipelines.models.demo import byte_symbols, learn_merges, write_json
from pipelines.models.layout import ONNX_FILE
from pipelines.safety import SafetySpec, export_safety_classifier, safety_classifier
from pipelines.text.convert import convert_gpt2_folder

#: Folder names under the models path (``text/…`` and ``safety/…`` are each kind's sub-folder).
DEMO_TEXT_MODEL = "text/demo-gpt2"
DEMO_SAFETY_MODEL = "safety/demo-safety"
#: Where the torch source of the demo GPT-2 is kept, for the reference tests.
TORCH_SOURCE = ".torch/demo-gpt2"
END_OF_TEXT = "<|endoftext|>"
#: GPT-2's byte symbol for a space: words after the first carry it as their first symbol.
SPACE_SYMBOL = "Ġ"
DEMO_CONTEXT = 256
DEMO_SEED = 20260
SAFETY_SEED = 20261
_WORDS = """
a an the of and or with in on at by for from to into over under is are very more most
portrait landscape painting photo photograph illustration drawing render concept art digital
oil watercolor sketch detailed intricate highly beautiful dramatic cinematic soft warm cold
light lighting shadow sunset sunrise night day sky cloud clouds mountain mountains forest river
lake sea ocean city street castle tower house garden flower flowers tree trees cat dog bird
horse dragon robot knight wizard woman man girl boy face eyes hair smile red blue green yellow
gold silver black white purple pink orange trending artstation unreal engine octane 4k 8k hd
masterpiece best quality sharp focus bokeh depth field wide angle close up by greg rutkowski
"""


def train_gpt2_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Learn byte-pair merges, GPT-2 style: a word after a space starts with ``Ġ``, no end marker.

    Each distinct word counts once and ties go to the largest pair, so the merges depend only on
    the word list.
    """
    unique = sorted(set(words))
    return learn_merges([tuple(word) for word in unique] + [(SPACE_SYMBOL, *word) for word in unique])


def write_gpt2_tokenizer(dest: Path) -> dict[str, int]:
    """Write a GPT-2 byte-level BPE tokenizer (vocab.json, merges.txt, configs); return its vocab."""
    merges = train_gpt2_merges(_WORDS.split())
    vocab: dict[str, int] = {}
    for token in [*byte_symbols(), *("".join(pair) for pair in merges), END_OF_TEXT]:
        vocab.setdefault(token, len(vocab))
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "vocab.json", vocab)
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    specials = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    write_json(dest / "special_tokens_map.json", specials)
    write_json(
        dest / "tokenizer_config.json",
        {
            **specials,
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": DEMO_CONTEXT,
            "add_prefix_space": False,
        },
    )
    return vocab


def write_demo_gpt2_checkpoint(dest: Path) -> None:
    """A two-layer GPT-2 (width 32) with random weights from a fixed seed, as a transformers folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = write_gpt2_tokenizer(dest)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=DEMO_CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        # Wider than GPT-2's 0.02, so the random model's next-token distributions are not flat:
        # greedy and top-k/top-p choices then differ, as with a trained model.
        initializer_range=0.2,
        bos_token_id=vocab[END_OF_TEXT],
        eos_token_id=vocab[END_OF_TEXT],
    )
    torch.manual_seed(DEMO_SEED)
    GPT2LMHeadModel(config).eval().save_pretrained(dest)


def build_demo_text_models(
    models_path: Path, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Build the demo GPT-2 and safety classifier under ``models_path`` unless they exist.

    ``progress`` hears of each model built (nothing when both exist); returns both folders.
    """
    report = progress or (lambda line: None)
    text = models_path / DEMO_TEXT_MODEL
    if force or not (text / ONNX_FILE).is_file():
        report(f"{DEMO_TEXT_MODEL}: building a random-weight GPT-2")
        source = models_path / TORCH_SOURCE
        write_demo_gpt2_checkpoint(source)
        convert_gpt2_folder(source, text)
    safety = models_path / DEMO_SAFETY_MODEL
    if force or not (safety / ONNX_FILE).is_file():
        report(f"{DEMO_SAFETY_MODEL}: building a random-weight safety classifier")
        export_safety_classifier(demo_safety_classifier(), safety, SafetySpec(labels=("safe", "nsfw")))
    return [text, safety]


def demo_safety_classifier() -> object:
    """A tiny CLIP vision encoder with a linear head over its pooled output, random from a fixed seed."""
    import torch
    from transformers import CLIPVisionConfig

    torch.manual_seed(SAFETY_SEED)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    )
    return safety_classifier(config, labels=2)

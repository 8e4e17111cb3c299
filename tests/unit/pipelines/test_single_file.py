"""Single-file (LDM layout) checkpoints to diffusers folders: detection, tokenizer, configs, round trips.

The round trips build tiny random-weight pipelines, write them as one civitai-style
``.safetensors`` file (``ldm_checkpoint``), convert that back with no network, and compare every
tensor and diffusers' images with the originals'.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import (
    ATTENTION_BELOW_TOP,
    OPEN_CLIP_PAD_TOKEN,
    OPEN_CLIP_TEXT_CONFIG,
    SDXL_DEMO_TIME_EMBED_DIM,
    SDXL_SCALING_FACTOR,
    SDXL_SCHEDULER_CONFIG,
    demo_text_encoder,
    demo_unet,
    demo_vae,
    seeded_unet,
    write_json,
)
from pipelines.models.single_file import (
    CONFIG_ROOT,
    FAMILIES,
    CheckpointError,
    detect_family,
    single_file_to_diffusers,
    write_clip_vocabulary,
)
from tests.unit.pipelines.ldm_checkpoint import sd1_checkpoint, sdxl_checkpoint

PROMPT = "a photo of an astronaut riding a horse"
#: CLIP's ids for ``PROMPT``, start and end tokens included, as the released tokenizers give them.
PROMPT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
#: The demo generation's size, seed and a short run.
WIDTH, HEIGHT, SEED, STEPS = 64, 48, 1234, 3
#: Images may differ by this many levels of 255 (conv algorithms may reorder sums).
MAX_LEVEL_DIFF = 2
#: Parameter counts of the public releases' models.
RELEASE_PARAMETERS = {
    ("sd1", "unet"): 859_520_964,
    ("sd1", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,
    ("sd2", "unet"): 865_910_724,
    ("sd2", "vae"): 83_653_863,
    ("sd2", "text_encoder"): 340_387_840,
    ("sd2-v", "unet"): 865_910_724,
    ("sd2-v", "vae"): 83_653_863,
    ("sd2-v", "text_encoder"): 340_387_840,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,
}
#: The tiny SDXL's OpenCLIP text encoder is wider than its CLIP one, as bigG is wider than ViT-L:
#: the loader tells SDXL's two encoders apart by width.
SDXL_OPEN_CLIP_WIDTH = 48


def tokenizer_folder(dest: Path, family: str = "sd1", name: str = "tokenizer") -> Path:
    """A tokenizer folder: the shipped ``family`` configs with the vocabulary built from open_clip's BPE."""
    shutil.copytree(CONFIG_ROOT / family / name, dest)
    write_clip_vocabulary(dest)
    return dest


def test_built_vocabulary_tokenizes_like_clip(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder(tmp_path / "tokenizer")))

    assert len(tokenizer) == 49408
    assert tokenizer(PROMPT).input_ids == PROMPT_IDS
    assert tokenizer.pad_token == "<|endoftext|>"
    # open_clip's file was found without importing the package (which needs torchvision).
    assert "open_clip" not in sys.modules


def test_open_clip_tokenizers_pad_with_exclamation_mark(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    for family, name in (("sd2", "tokenizer"), ("sd2-v", "tokenizer"), ("sdxl", "tokenizer_2")):
        folder = tokenizer_folder(tmp_path / family / name, family, name)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        assert tokenizer.pad_token == OPEN_CLIP_PAD_TOKEN
        assert tokenizer(PROMPT, padding="max_length").input_ids[:11] == [*PROMPT_IDS, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_configs_build_the_released_models(family: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIG_ROOT / family
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    text_classes = {
        "CLIPTextModel": CLIPTextModel,
        "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
    }
    counts = {}
    with torch.device("meta"):
        counts["unet"] = _parameters(
            UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        )
        counts["vae"] = _parameters(AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")))
        for name in ("text_encoder", "text_encoder_2"):
            if name in index:
                text_class = text_classes[index[name][1]]
                counts[name] = _parameters(text_class(CLIPTextConfig.from_pretrained(folder / name)))

    assert counts == {part: count for (owner, part), count in RELEASE_PARAMETERS.items() if owner == family}


def _parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_shipped_schedulers_match_the_releases() -> None:
    predictions = {}
    for family in FAMILIES:
        config = json.loads((CONFIG_ROOT / family / "scheduler" / "scheduler_config.json").read_text("utf-8"))
        predictions[family] = (config["_class_name"], config.get("prediction_type", "epsilon"))

    assert predictions == {
        "sd1": ("PNDMScheduler", "epsilon"),
        "sd2": ("PNDMScheduler", "epsilon"),
        "sd2-v": ("DDIMScheduler", "v_prediction"),
        "sdxl": ("EulerDiscreteScheduler", "epsilon"),
    }


def save_config_folder(pipeline: Any, dest: Path) -> Path:
    """``pipeline``'s diffusers folder without its weights: the configs and tokenizer files only."""
    full = dest.with_name(dest.name + "-full")
    pipeline.save_pretrained(full, safe_serialization=True)
    shutil.copytree(full, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    shutil.rmtree(full)
    return dest


def forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any socket connection fail, so a conversion that reaches for the hub fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the conversion opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def assert_same_weights(original: Any, converted: Any, parts: tuple[str, ...]) -> None:
    """Every tensor of each of ``parts`` in ``converted`` equals ``original``'s, and none is missing."""
    for part in parts:
        expected = getattr(original, part).state_dict()
        actual = getattr(converted, part).state_dict()
        assert set(actual) == set(expected), part
        for key, value in expected.items():
            assert torch.equal(actual[key], value), f"{part}.{key}"


def images(pipeline: Any, **inputs: Any) -> np.ndarray:
    """``pipeline``'s image for ``PROMPT`` at the demo size, 0-255 levels."""
    pipeline.set_progress_bar_config(disable=True)
    result = pipeline(
        PROMPT,
        num_inference_steps=STEPS,
        width=WIDTH,
        height=HEIGHT,
        generator=torch.Generator().manual_seed(SEED),
        output_type="np",
        **inputs,
    ).images
    return (result * 255).round().astype(np.int16)


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tokenizer_folder(tmp_path_factory.mktemp("vocab") / "tokenizer")


def tiny_sd1(vocab_folder: Path) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from pipelines.models.demo import SD15_SCHEDULER_CONFIG

    tokenizer = CLIPTokenizer.from_pretrained(str(vocab_folder))
    return StableDiffusionPipeline(
        unet=demo_unet().eval(),
        vae=demo_vae().eval(),
        text_encoder=demo_text_encoder(tokenizer.get_vocab()).eval(),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def test_sd1_round_trip(tmp_path: Path, vocab_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline

    original = tiny_sd1(vocab_folder)
    checkpoint = tmp_path / "tiny-sd1.safetensors"
    save_file(sd1_checkpoint(original.unet, original.vae, original.text_encoder), checkpoint)
    config = save_config_folder(original, tmp_path / "config")
    lines: list[str] = []

    assert detect_family(checkpoint) == "sd1"
    forbid_network(monkeypatch)
    dest = single_file_to_diffusers(checkpoint, tmp_path / "diffusers", config=config, progress=lines.append)
    monkeypatch.undo()

    assert lines[0] == "reading checkpoint"
    assert {"building tokenizer", "saving diffusers folder"} <= set(lines)
    converted = StableDiffusionPipeline.from_pretrained(dest)
    assert_same_weights(original, converted, ("unet", "vae", "text_encoder"))
    assert converted.tokenizer(PROMPT).input_ids == PROMPT_IDS
    reference = images(original)
    assert np.abs(images(converted) - reference).max() <= MAX_LEVEL_DIFF
    # A seeded random UNet still draws something: equal images are not two blank ones.
    assert reference.std() > 1
    # The folder is what the ONNX converter takes, slow-tokenizer files included.
    onnx = convert_diffusers_folder(dest, tmp_path / "onnx")
    assert {path.name for path in (onnx / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}


def test_half_precision_checkpoint_and_prediction_type(tmp_path: Path, vocab_folder: Path) -> None:
    original = tiny_sd1(vocab_folder)
    checkpoint = tmp_path / "tiny-sd1-fp16.safetensors"
    state = sd1_checkpoint(original.unet, original.vae, original.text_encoder)
    save_file({key: value.half() for key, value in state.items()}, checkpoint)
    config = save_config_folder(original, tmp_path / "config")

    dest = single_file_to_diffusers(checkpoint, tmp_path / "v", config=config, prediction_type="v_prediction")

    scheduler = json.loads((dest / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    assert scheduler["prediction_type"] == "v_prediction"
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (dest / part).glob("*.safetensors")
        assert {tensor.dtype for tensor in load_file(weights).values()} == {torch.float32}, part
    unet = load_file(dest / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(unet["conv_in.weight"], original.unet.conv_in.weight.half().float())


def test_inpainting_unet_gives_an_inpainting_pipeline(tmp_path: Path, vocab_folder: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    txt2img = tiny_sd1(vocab_folder)
    unet = demo_unet(in_channels=9).eval()
    checkpoint = tmp_path / "tiny-inpainting.safetensors"
    save_file(sd1_checkpoint(unet, txt2img.vae, txt2img.text_encoder), checkpoint)

    # The txt2img configs: the UNet's input channels come from the checkpoint.
    config = save_config_folder(txt2img, tmp_path / "config")
    dest = single_file_to_diffusers(checkpoint, tmp_path / "inpainting", config=config)

    converted = StableDiffusionInpaintPipeline.from_pretrained(dest)
    assert json.loads((dest / "model_index.json").read_text("utf-8"))["_class_name"] == (
        "StableDiffusionInpaintPipeline"
    )
    assert_same_weights(txt2img, converted, ("vae", "text_encoder"))
    for key, value in unet.state_dict().items():
        assert torch.equal(converted.unet.state_dict()[key], value), key


def test_checkpoint_that_does_not_fit_the_configs_is_rejected(tmp_path: Path, vocab_folder: Path) -> None:
    tiny = tiny_sd1(vocab_folder)
    checkpoint = tmp_path / "tiny-sd1.safetensors"
    save_file(sd1_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder), checkpoint)

    # The shipped SD 1.5 configs are full size; the tiny weights cannot fill them.
    with pytest.raises(CheckpointError, match="does not fit"):
        single_file_to_diffusers(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def tiny_sdxl(vocab_folder: Path, tmp_path: Path) -> Any:
    """A tiny SDXL base pipeline: CLIP and a wider OpenCLIP-style encoder, a ``text_time`` UNet."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(vocab_folder))
    tokenizer_2 = CLIPTokenizer.from_pretrained(
        str(tokenizer_folder(tmp_path / "tokenizer_2", "sdxl", "tokenizer_2"))
    )
    vocab = tokenizer.get_vocab()
    torch.manual_seed(5)
    open_clip = {**OPEN_CLIP_TEXT_CONFIG, "hidden_size": SDXL_OPEN_CLIP_WIDTH}
    open_clip.update(
        intermediate_size=4 * SDXL_OPEN_CLIP_WIDTH, num_attention_heads=SDXL_OPEN_CLIP_WIDTH // 16
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            projection_dim=SDXL_OPEN_CLIP_WIDTH,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            **open_clip,
        )
    )
    text_encoder = demo_text_encoder(vocab)
    text_width = text_encoder.config.hidden_size
    unet = seeded_unet(
        4,
        sample_size=8,
        in_channels=4,
        **ATTENTION_BELOW_TOP,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=text_width + SDXL_OPEN_CLIP_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_DEMO_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_DEMO_TIME_EMBED_DIM + SDXL_OPEN_CLIP_WIDTH,
    )
    return StableDiffusionXLPipeline(
        unet=unet.eval(),
        vae=demo_vae(scaling_factor=SDXL_SCALING_FACTOR).eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
    )


def test_sdxl_round_trip(tmp_path: Path, vocab_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionXLPipeline

    original = tiny_sdxl(vocab_folder, tmp_path)
    checkpoint = tmp_path / "tiny-sdxl.safetensors"
    parts = (original.unet, original.vae, original.text_encoder, original.text_encoder_2)
    save_file(sdxl_checkpoint(*parts), checkpoint)
    config = save_config_folder(original, tmp_path / "config")

    assert detect_family(checkpoint) == "sdxl"
    forbid_network(monkeypatch)
    dest = single_file_to_diffusers(checkpoint, tmp_path / "diffusers", config=config)
    monkeypatch.undo()

    converted = StableDiffusionXLPipeline.from_pretrained(dest)
    assert_same_weights(original, converted, ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert converted.tokenizer_2.pad_token == OPEN_CLIP_PAD_TOKEN
    reference = images(original)
    assert np.abs(images(converted) - reference).max() <= MAX_LEVEL_DIFF
    assert reference.std() > 1


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file with tensors of ``shapes`` (zeros): what a checkpoint's header would list."""
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, path)
    return path


#: The keys (and shapes, shrunk) that tell the families apart in a real checkpoint's header.
UNET_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3),
}


def unet_attending(width: int, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {
        **UNET_KEYS,
        "model.diffusion_model.input_blocks.0.0.weight": (8, in_channels, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, width),
    }


SDXL_TEXT = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (10, 3),
    "conditioner.embedders.1.model.token_embedding.weight": (10, 5),
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (15, 5),
}
SD2_TEXT = {"cond_stage_model.model.token_embedding.weight": (10, 4)}
SD1_TEXT = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 3)}


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        ({**SDXL_TEXT, **unet_attending(8)}, "sdxl"),
        ({**SDXL_TEXT, **unet_attending(8, in_channels=9)}, "sdxl"),
        ({**SD2_TEXT, **unet_attending(4)}, "sd2"),
        ({**SD1_TEXT, **unet_attending(3, in_channels=9)}, "sd1"),
    ],
)
def test_detect_family_from_the_header(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], family: str
) -> None:
    assert detect_family(write_header_only(tmp_path / "model.safetensors", shapes)) == family


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {"lora_unet_down_blocks_0.alpha": (1,), "lora_te_text_model.alpha": (1,)},
            "lora_te_text_model, lora_unet",
        ),
        ({"conditioner.embedders.0.model.token_embedding.weight": (10, 5), **unet_attending(5)}, "refiner"),
        ({**SD1_TEXT, **unet_attending(3, in_channels=7)}, "7 input channels"),
        ({**SD1_TEXT, "first_stage_model.encoder.conv_in.weight": (4, 3, 3, 3)}, "no UNet"),
        ({**SD1_TEXT, **unet_attending(4)}, "attends to 4 channels"),
    ],
)
def test_other_files_are_rejected_naming_what_they_hold(
    tmp_path: Path, shapes: dict[str, tuple[int, ...]], message: str
) -> None:
    path = write_header_only(tmp_path / "model.safetensors", shapes)

    with pytest.raises(CheckpointError, match=message) as raised:
        detect_family(path)
    assert raised.value.code == "bad_checkpoint"
    with pytest.raises(CheckpointError):
        single_file_to_diffusers(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_safetensors_files_are_rejected(tmp_path: Path) -> None:
    pickle = tmp_path / "model.safetensors"
    pickle.write_bytes(b"PK\x03\x04" + bytes(200))
    ckpt = tmp_path / "model.ckpt"
    write_json(ckpt, {})

    with pytest.raises(CheckpointError, match="not a safetensors file"):
        detect_family(pickle)
    with pytest.raises(CheckpointError, match=r"only \.safetensors"):
        single_file_to_diffusers(ckpt, tmp_path / "out")


def test_family_must_fit_the_checkpoint(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "model.safetensors", {**SD2_TEXT, **unet_attending(4)})

    with pytest.raises(CheckpointError, match="a sd2 checkpoint, not sdxl"):
        single_file_to_diffusers(path, tmp_path / "out", family="sdxl")
    with pytest.raises(ValueError, match="prediction_type"):
        single_file_to_diffusers(path, tmp_path / "out", prediction_type="sample")

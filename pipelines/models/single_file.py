"""Turn a single-file Stable Diffusion checkpoint (civitai style) into a diffusers folder, offline.

A single-file checkpoint is one ``.safetensors`` file in the original LDM key layout: the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, and the text encoder under
``cond_stage_model.transformer.`` (SD 1.x, CLIP ViT-L), ``cond_stage_model.model.`` (SD 2.x,
OpenCLIP ViT-H) or ``conditioner.embedders.0.transformer.`` and ``conditioner.embedders.1.model.``
(SDXL base: CLIP ViT-L and OpenCLIP bigG). ``detect_family`` reads only the file's header (key
names and shapes) to tell which; SD 2.x with epsilon and with v prediction have the same weights,
so it answers ``sd2`` and the caller says ``sd2-v``.

The weights hold no architecture, tokenizer or scheduler, so diffusers' ``from_single_file``
normally fetches the matching release's configs from the Hugging Face hub. Here it is handed a
local diffusers-format folder (``config=``, with ``local_files_only=True``) and never reaches the
network: nothing it is given names a hub repository, so ``HF_HUB_OFFLINE`` is not needed (and
huggingface_hub reads that variable once, at import). The folders ship in
``pipelines/data/checkpoints/<family>/``: the configs of SD 1.5, SD 2.1-base (``sd2``: 512 pixels,
epsilon), SD 2.1 (``sd2-v``: 768 pixels, v prediction) and SDXL base 1.0, as those releases
publish them, keeping only the keys diffusers and transformers read.

The tokenizer's vocabulary is not shipped: it is the BPE of OpenAI's CLIP, which open_clip carries
as ``bpe_simple_vocab_16e6.txt.gz``. open_clip is installed without its dependencies only for that
file, and its package is located without being imported (its ``__init__`` needs torchvision).
``vocab.json`` and ``merges.txt`` are built from it into a temporary copy of the family's folder:
the 256 byte symbols, each of them ending a word (``</w>``), every merge joined, then the start and
end tokens (49,408 entries, as transformers' ``CLIPTokenizer`` expects). OpenCLIP's tokenizer (SD
2.x's, and SDXL's second) has the same vocabulary and pads with "!" instead of the end token.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.models.demo import clip_vocab, write_json

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: The shipped diffusers config folders, one per family.
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
CHECKPOINT_SUFFIX = ".safetensors"
#: A safetensors header is JSON of a few hundred kilobytes even for SDXL; more means not safetensors.
MAX_HEADER_BYTES = 64 * 1024 * 1024

UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."
#: The token embeddings of each family's text encoders; an embedding's width is its encoder's, and
#: the UNet attends to these widths side by side.
TEXT_EMBEDDINGS: dict[str, tuple[str, ...]] = {
    "sdxl": (
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ),
    "sd2": ("cond_stage_model.model.token_embedding.weight",),
    "sd1": ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",),
}
#: UNet input channels: latents (txt2img), or latents, mask and masked-image latents (inpainting).
TXT2IMG_CHANNELS = 4
INPAINT_CHANNELS = 9
#: diffusers' pipeline class per family and UNet input channels.
PIPELINE_CLASSES = {
    (False, TXT2IMG_CHANNELS): "StableDiffusionPipeline",
    (False, INPAINT_CHANNELS): "StableDiffusionInpaintPipeline",
    (True, TXT2IMG_CHANNELS): "StableDiffusionXLPipeline",
    (True, INPAINT_CHANNELS): "StableDiffusionXLInpaintPipeline",
}

#: open_clip's copy of CLIP's BPE: a version line, then merges, most frequent first.
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: CLIP uses the first 48,894 merges of that file: with the 512 byte symbols (plain and ending a
#: word) and the 2 special tokens, its 49,408 tokens.
BPE_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


class CheckpointError(ValueError):
    """The file is not a Stable Diffusion checkpoint this converter takes."""

    code = "bad_checkpoint"


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of the safetensors file ``path``, without reading any tensor data."""
    try:
        with path.open("rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path.name}: too short for a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path.name}: not a safetensors file (header of {length} bytes)")
            header = json.loads(file.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path.name}: not a safetensors file ({error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: not a safetensors file (header is not a table)")
    return {
        name: tuple(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "shape" in entry
    }


def detect_family(path: Path) -> str:
    """``sd1``, ``sd2`` or ``sdxl``, from the keys and shapes in ``path``'s safetensors header.

    Raises ``CheckpointError`` naming what was found when the file is not a whole SD 1.x, SD 2.x or
    SDXL base checkpoint with a txt2img or inpainting UNet.
    """
    return _inspect(path, read_header(path))[0]


def _inspect(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int]:
    """The family of the checkpoint with tensor ``shapes`` and its UNet's input channels."""
    family = _text_family(path, shapes)
    if UNET_CONV_IN not in shapes:
        raise CheckpointError(f"{path.name}: {family} text encoder but no UNet ({UNET_PREFIX}*)")
    in_channels = _width(path, shapes, UNET_CONV_IN)
    if in_channels not in (TXT2IMG_CHANNELS, INPAINT_CHANNELS):
        raise CheckpointError(
            f"{path.name}: a {family} UNet with {in_channels} input channels; only "
            f"{TXT2IMG_CHANNELS} (txt2img) and {INPAINT_CHANNELS} (inpainting) are supported"
        )
    if not any(name.startswith(VAE_PREFIX) for name in shapes):
        raise CheckpointError(f"{path.name}: {family} UNet and text encoder but no VAE ({VAE_PREFIX}*)")
    context = next(
        (
            _width(path, shapes, name)
            for name in shapes
            if name.startswith(UNET_PREFIX) and name.endswith(".attn2.to_k.weight")
        ),
        None,
    )
    if context is None:
        raise CheckpointError(f"{path.name}: a UNet without cross-attention is not Stable Diffusion")
    text_width = sum(_width(path, shapes, embedding) for embedding in TEXT_EMBEDDINGS[family])
    if context != text_width:
        raise CheckpointError(
            f"{path.name}: the UNet attends to {context} channels but the {family} text encoders give "
            f"{text_width}"
        )
    return family, in_channels


def _width(path: Path, shapes: Mapping[str, tuple[int, ...]], name: str) -> int:
    """The second dimension of tensor ``name``: a layer's input channels, an embedding's width."""
    shape = shapes[name]
    if len(shape) < 2:
        raise CheckpointError(f"{path.name}: {name} has shape {list(shape)}, not a weight matrix")
    return shape[1]


def _text_family(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The family whose text encoders' token embeddings are all in ``shapes``."""
    for family, embeddings in TEXT_EMBEDDINGS.items():
        if all(embedding in shapes for embedding in embeddings):
            return family
    if any(name.startswith("conditioner.embedders.0.model.") for name in shapes):
        raise CheckpointError(
            f"{path.name}: an SDXL refiner (OpenCLIP bigG only); only SDXL base is supported"
        )
    prefixes = sorted({name.split(".")[0] for name in shapes})
    raise CheckpointError(
        f"{path.name}: not a Stable Diffusion checkpoint: {len(shapes)} tensors under "
        f"{', '.join(prefixes[:8]) or 'nothing'}{', ...' if len(prefixes) > 8 else ''}"
    )


def single_file_to_diffusers(
    path: Path,
    dest: Path,
    *,
    family: str | None = None,
    prediction_type: str | None = None,
    config: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Path:
    """Write the single-file checkpoint ``path`` as a diffusers folder ``dest`` and return ``dest``.

    ``family`` (one of ``FAMILIES``) defaults to the detected one; ``sd2-v`` takes an SD 2.x file.
    ``config`` is a diffusers folder of configs to use instead of the shipped family's, and
    ``prediction_type`` (``epsilon`` or ``v_prediction``) overrides its scheduler's. A 9-channel
    UNet gives an inpainting pipeline. Weights are written in fp32, whatever the file's precision.
    The folder is written beside ``dest`` and renamed into place, replacing an existing ``dest``.
    """
    if path.suffix != CHECKPOINT_SUFFIX:
        # diffusers picks its loader by extension: anything else would be unpickled by torch.
        raise CheckpointError(f"{path.name}: only {CHECKPOINT_SUFFIX} files are converted here")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, not {prediction_type!r}"
        )
    progress("reading checkpoint")
    detected, in_channels = _inspect(path, read_header(path))
    family = family or detected
    if family.split("-")[0] != detected:
        raise CheckpointError(f"{path.name}: a {detected} checkpoint, not {family}")
    with tempfile.TemporaryDirectory(prefix="single-file-") as work:
        progress("building tokenizer")
        folder = _config_copy(config or CONFIG_ROOT / family, Path(work) / "config")
        pipeline_class = PIPELINE_CLASSES[(family == "sdxl", in_channels)]
        _adapt_config(folder, pipeline_class, in_channels, prediction_type)
        progress("loading weights")
        pipeline = _load(path, folder, pipeline_class)
        progress("saving diffusers folder")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipeline.save_pretrained(partial, safe_serialization=True)
        _keep_tokenizer_files(folder, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _config_copy(source: Path, folder: Path) -> Path:
    """Copy the config folder ``source`` to ``folder``, giving each tokenizer CLIP's vocabulary."""
    if not (source / "model_index.json").is_file():
        raise ValueError(f"config must be a diffusers folder with a model_index.json: {source}")
    shutil.copytree(source, folder)
    for name in TOKENIZER_FOLDERS:
        tokenizer = folder / name
        if tokenizer.is_dir() and not (tokenizer / "vocab.json").is_file():
            write_clip_vocabulary(tokenizer)
    return folder


def _keep_tokenizer_files(folder: Path, saved: Path) -> None:
    """Put the config folder's tokenizers (vocabulary, merges, configs) in the saved folder.

    transformers saves only ``tokenizer.json``, but the ONNX converter copies the slow-tokenizer
    files; a checkpoint holds no tokenizer, so the config's files are the tokenizer as loaded.
    """
    for name in TOKENIZER_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(saved / name, ignore_errors=True)
            shutil.copytree(folder / name, saved / name)


def _adapt_config(folder: Path, pipeline_class: str, in_channels: int, prediction_type: str | None) -> None:
    """Set the pipeline class, UNet input channels and (when given) prediction type in ``folder``."""
    _update_json(folder / "model_index.json", {"_class_name": pipeline_class})
    _update_json(folder / "unet" / "config.json", {"in_channels": in_channels})
    if prediction_type is not None:
        _update_json(folder / "scheduler" / "scheduler_config.json", {"prediction_type": prediction_type})


def _update_json(path: Path, values: Mapping[str, Any]) -> None:
    write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **values})


def _load(path: Path, folder: Path, pipeline_class: str) -> Any:
    """diffusers' ``pipeline_class`` from the checkpoint ``path`` and the config folder ``folder``."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    loader = getattr(diffusers, pipeline_class)
    try:
        # Half-precision checkpoints are common; the ONNX converter exports fp32 weights.
        return loader.from_single_file(
            str(path), config=str(folder), local_files_only=True, torch_dtype=torch.float32
        )
    except (SingleFileComponentError, ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path.name}: does not fit the {folder.name} configs: {error}") from error


def write_clip_vocabulary(folder: Path) -> None:
    """Write CLIP's ``vocab.json`` and ``merges.txt``, the files of transformers' ``CLIPTokenizer``."""
    merges = clip_bpe_merges()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", clip_vocab(merges))
    lines = [MERGES_HEADER, *(f"{first} {second}" for first, second in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def clip_bpe_merges() -> list[tuple[str, str]]:
    """CLIP's byte-pair merges, most frequent first, from open_clip's copy of its BPE file."""
    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    pairs = [line.split(" ") for line in lines[1 : BPE_MERGES + 1]]
    return [(first, second) for first, second in pairs]


def bpe_file() -> Path:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz``, found without importing open_clip."""
    # find_spec of a top-level package locates it without running its __init__ (which imports
    # torchvision, not installed here).
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{BPE_FILE} not found: install open_clip_torch (requirements/convert-nodeps.txt, --no-deps)"
    )

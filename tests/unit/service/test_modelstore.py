"""The model store's pure parts: content hashes, a model's description, what a job needs, the
api's registry listing published models beside the folder's own, and the cache's links to the
local models folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.models.registry import ModelRegistry, PublishedModel
from service.jobs.models import ModelFile
from service.modelstore import content_hash, describe_model, in_folder, job_model_names, link_entries


def test_the_content_hash_names_the_files_whatever_their_order() -> None:
    a, b = ModelFile("m/a", "1" * 64, 1), ModelFile("m/b", "2" * 64, 2)

    assert content_hash([a, b]) == content_hash([b, a])
    assert content_hash([a, b]) != content_hash([a, ModelFile("m/b", "2" * 64, 3)])
    assert content_hash([a, b]) != content_hash([a, ModelFile("m/c", "2" * 64, 2)])


def test_a_model_is_described_by_its_place_in_the_models_folder(tmp_path: Path) -> None:
    folder = tmp_path / "stable-diffusion-x"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "model.onnx").write_bytes(b"unet")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "style.safetensors").write_bytes(b"lora")
    (tmp_path / "upscaling-x2.onnx").write_bytes(b"up")

    diffusion = describe_model(folder)
    lora = describe_model(tmp_path / "lora" / "style.safetensors")
    upscaler = describe_model(tmp_path / "upscaling-x2.onnx")

    assert (diffusion.name, diffusion.kind, diffusion.family, diffusion.path) == (
        "stable-diffusion-x",
        "diffusion",
        "sdxl",
        "stable-diffusion-x",
    )
    assert [item.path for item in diffusion.files] == [
        "stable-diffusion-x/model_index.json",
        "stable-diffusion-x/unet/model.onnx",
    ]
    assert diffusion.size_bytes == 4 + len(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert (lora.name, lora.kind, lora.path, lora.files[0].path) == (
        "style",
        "lora",
        "lora/style.safetensors",
        "lora/style.safetensors",
    )
    assert (upscaler.name, upscaler.kind, upscaler.path) == ("upscaling-x2", "upscaling", "upscaling-x2.onnx")
    (tmp_path / "weights.bin").write_bytes(b"?")
    with pytest.raises(ValueError, match=r"cannot tell the kind of model 'weights\.bin'"):
        describe_model(tmp_path / "weights.bin")


def test_a_job_needs_its_model_and_the_models_its_stages_name() -> None:
    chain = {
        "stages": [
            {"params": {"model": "stable-diffusion-x"}},
            {"params": {"upscale_model": "upscaling-x2", "correction_model": ""}},
            {"params": {"correction_model": "correction-gfpgan"}},
        ]
    }

    assert job_model_names(chain, "stable-diffusion-x") == [
        "stable-diffusion-x",
        "upscaling-x2",
        "correction-gfpgan",
    ]


def test_a_folder_holds_a_model_as_a_folder_or_an_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "diffusion" / "foo").mkdir()
    (tmp_path / "upscaling-x2.onnx").write_bytes(b"")

    assert in_folder(tmp_path, "diffusion/foo") and in_folder(tmp_path, "upscaling-x2")
    assert not in_folder(tmp_path, "foo") and not in_folder(tmp_path, "../x") and not in_folder(tmp_path, "")


def test_published_models_are_listed_after_the_folder_and_the_folder_wins_a_name(tmp_path: Path) -> None:
    (tmp_path / "stable-diffusion-local").mkdir()
    (tmp_path / "upscaling-x2.onnx").write_bytes(b"")
    registry = ModelRegistry(tmp_path)

    registry.set_published(
        [
            PublishedModel("stable-diffusion-local", "diffusion", "stable-diffusion-local", "sdxl", 5),
            PublishedModel("diffusion-remote", "diffusion", "diffusion-remote", "sdxl", 1234),
            PublishedModel("upscaling-remote", "upscaling", "upscaling-remote.onnx", "sd", 9),
            PublishedModel("style", "lora", "lora/style.safetensors", "sd", 3),
        ]
    )

    listed = registry.models()
    assert listed["diffusion"] == ["stable-diffusion-local", "diffusion-remote"]
    assert listed["upscaling"] == ["upscaling-x2", "upscaling-remote"]
    assert listed["networks"] == [{"name": "style", "tokens": [], "type": "lora"}]
    assert registry.find_model("upscaling", "upscaling-remote") == "upscaling-remote"
    assert registry.family("diffusion-remote") == "sdxl" and registry.model_bytes("diffusion-remote") == 1234
    assert registry.family("stable-diffusion-local") == "sd"  # the folder's own, not the store's
    registry.set_published([])
    assert registry.models()["diffusion"] == ["stable-diffusion-local"]


def _models_folder(root: Path, marker: str) -> Path:
    """A local models folder with a single-file model, a model folder and a LoRA, each holding ``marker``."""
    (root / "diffusion-demo").mkdir(parents=True)
    (root / "diffusion-demo" / "model_index.json").write_text(marker)
    (root / "upscaling-x.onnx").write_text(marker)
    (root / "lora").mkdir()
    (root / "lora" / "style.safetensors").write_text(marker)
    return root


def test_links_left_by_another_models_folder_are_pointed_at_this_one(tmp_path: Path) -> None:
    first, second = _models_folder(tmp_path / "first", "first"), _models_folder(tmp_path / "second", "second")
    view = tmp_path / "cache"
    view.mkdir()
    link_entries(first, view)
    (view / "upscaling-pulled.onnx").write_text("pulled")  # a model the cache pulled itself

    link_entries(second, view)

    entries = ("diffusion-demo/model_index.json", "upscaling-x.onnx", "lora/style.safetensors")
    assert [(view / entry).read_text() for entry in entries] == ["second"] * 3
    assert (view / "upscaling-x.onnx").resolve() == (second / "upscaling-x.onnx").resolve()
    assert (view / "upscaling-pulled.onnx").read_text() == "pulled"
    assert sorted(path.name for path in view.iterdir()) == [
        "diffusion-demo",
        "lora",
        "upscaling-pulled.onnx",
        "upscaling-x.onnx",
    ]
    assert [path.name for path in (view / "lora").iterdir()] == ["style.safetensors"]

"""The model registry: listing (contract §5.3), extras (§11.2), strings (§5.8), hashes (§7.3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines.models.registry import ModelRegistry


def touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    folder(root / "stable-diffusion-onnx-v1-5")
    folder(root / "diffusion-dreamshaper")
    folder(root / "stable-diffusion-v1.5")  # a dotted directory keeps its full name
    folder(root / "other-model")  # no known prefix: not listed
    touch(root / "upscaling-real-esrgan-x4.onnx")
    touch(root / "upscaling-bsrgan-x4.onnx")
    touch(root / "upscaling-bsrgan-x4.onnx.crdownload")
    touch(root / "upscaling-partial.lock")
    touch(root / "correction-gfpgan-v1-3.onnx")
    touch(root / "correction-tmp.tmp")
    folder(root / "diffusion" / "anime")
    folder(root / "diffusion" / "diffusion-dreamshaper")  # also at the top: listed once
    folder(root / "diffusion" / ".hidden")
    touch(root / "upscaling" / "swinir.onnx")
    touch(root / "control" / "canny.onnx")
    touch(root / "inversion" / "autumn.safetensors")
    touch(root / "lora" / "details.safetensors")
    touch(root / "lora" / "details.ckpt")
    return root


def test_models_are_listed_by_kind_top_level_first(models: Path) -> None:
    assert ModelRegistry(models).models() == {
        "correction": ["correction-gfpgan-v1-3"],
        "diffusion": [
            "diffusion-dreamshaper",
            "stable-diffusion-onnx-v1-5",
            "stable-diffusion-v1.5",
            "anime",
        ],
        "networks": [
            {"name": "canny", "tokens": [], "type": "control"},
            {"name": "autumn", "tokens": [], "type": "inversion"},
            {"name": "details", "tokens": [], "type": "lora"},
        ],
        "upscaling": ["upscaling-bsrgan-x4", "upscaling-real-esrgan-x4", "swinir"],
    }


def test_find_model_accepts_bare_and_prefixed_sub_folder_names(models: Path) -> None:
    registry = ModelRegistry(models)

    assert registry.find_model("diffusion", "stable-diffusion-onnx-v1-5") == "stable-diffusion-onnx-v1-5"
    assert registry.find_model("diffusion", "anime") == "diffusion/anime"
    assert registry.find_model("diffusion", "diffusion/anime") == "diffusion/anime"
    # Listed at the top and in the sub-folder: the bare name is the top-level one.
    assert registry.find_model("diffusion", "diffusion-dreamshaper") == "diffusion-dreamshaper"
    assert (
        registry.find_model("diffusion", "diffusion/diffusion-dreamshaper")
        == "diffusion/diffusion-dreamshaper"
    )
    assert registry.find_model("upscaling", "upscaling/swinir") == "upscaling/swinir"


@pytest.mark.parametrize(
    "name",
    [
        "other-model",
        "upscaling-bsrgan-x4",
        "diffusion/stable-diffusion-onnx-v1-5",
        "../models/anime",
        "",
        "anime/",
    ],
)
def test_find_model_refuses_what_is_not_listed(models: Path, name: str) -> None:
    assert ModelRegistry(models).find_model("diffusion", name) is None


def test_find_network_by_type(models: Path) -> None:
    registry = ModelRegistry(models)

    assert registry.find_network("control", "canny") is not None
    assert registry.find_network("control", "details") is None
    assert [n.name for n in registry.networks("lora")] == ["details"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../x", "..\\..\\x", "./a//b"])
def test_resolve_never_leaves_the_models_folder(models: Path, name: str) -> None:
    resolved = ModelRegistry(models).resolve(name)

    assert resolved.is_relative_to(models)
    assert ".." not in resolved.parts


def test_a_missing_models_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ModelRegistry(tmp_path / "absent")


EXTRAS = {
    "diffusion": [
        {
            "name": "dreamshaper",
            "label": "Dreamshaper",
            "source": "x",
            "hash": "879DB523C3",
            "inversions": [{"name": "autumn", "label": "Autumn Style", "source": "y"}],
            "loras": [{"name": "wood", "label": "Wood", "source": "z"}],
        },
        {"name": "stable-diffusion-onnx-v1-5", "label": "SD 1.5", "source": "x"},
        ["legacy", "tuple"],
    ],
    "upscaling": [{"name": "upscaling-real-esrgan-x4", "label": "Real ESRGAN x4", "source": "x", "scale": 4}],
    "networks": [
        {"name": "details", "label": "Detail Tweaker", "type": "lora", "source": "x", "tokens": ["detailed"]},
        {"name": "autumn", "type": "inversion", "source": "x", "tokens": ["autumn", "autumn-all"]},
        {"name": "canny", "type": "control", "source": "x", "tokens": ["never-shown"]},
    ],
    "sources": [{"name": "detector", "source": "x"}],
    "strings": {"de": {"translation": {"model": {"diffusion-dreamshaper": "Traumformer"}}}},
}


def test_default_extras_file_gives_tokens_labels_and_strings(models: Path) -> None:
    touch(models / "extras.json", json.dumps(EXTRAS))
    registry = ModelRegistry(models)

    networks = registry.models()["networks"]
    assert networks == [
        {"name": "canny", "tokens": [], "type": "control"},
        {"name": "autumn", "tokens": ["autumn", "autumn-all"], "type": "inversion"},
        {"name": "details", "tokens": ["detailed"], "type": "lora"},
    ]
    assert registry.strings() == {
        "de": {"translation": {"model": {"diffusion-dreamshaper": "Traumformer"}}},
        "en": {
            "translation": {
                "model": {
                    "diffusion-dreamshaper": "Dreamshaper",
                    "inversion.autumn": "Autumn Style",
                    "lora.wood": "Wood",
                    "stable-diffusion-onnx-v1-5": "SD 1.5",
                    "upscaling-real-esrgan-x4": "Real ESRGAN x4",
                    "lora.details": "Detail Tweaker",
                }
            }
        },
    }


def test_strings_without_extras(models: Path) -> None:
    assert ModelRegistry(models).strings() == {"en": {"translation": {"model": {}}}}


def test_strings_are_a_copy(models: Path) -> None:
    registry = ModelRegistry(models)
    registry.strings()["en"]["translation"]["model"]["x"] = "changed"

    assert registry.strings() == {"en": {"translation": {"model": {}}}}


def test_explicit_english_strings_win_over_labels(models: Path) -> None:
    extras = {
        "diffusion": [{"name": "diffusion-a", "label": "From label", "source": "x"}],
        "strings": {"en": {"translation": {"model": {"diffusion-a": "From strings"}}}},
    }
    touch(models / "extras.json", json.dumps(extras))

    assert ModelRegistry(models).strings()["en"]["translation"]["model"] == {"diffusion-a": "From strings"}


def test_configured_extras_files_merge_and_yaml_works(models: Path, tmp_path: Path) -> None:
    touch(models / "extras.json", json.dumps({"strings": {"fr": {"a": "ignored: not configured"}}}))
    touch(tmp_path / "one.yaml", "strings:\n  de:\n    translation: {a: eins}\n")
    touch(tmp_path / "two.json", json.dumps({"strings": {"de": {"translation": {"b": "zwei"}}}}))

    registry = ModelRegistry(models, [tmp_path / "one.yaml", tmp_path / "two.json"])

    assert registry.strings()["de"] == {"translation": {"a": "eins", "b": "zwei"}}
    assert "fr" not in registry.strings()


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"diffusion": [], "unknown": 1}',
        '{"diffusion": {"name": "x"}}',
        '{"strings": {"english": {}}}',
        '{"strings": {"de": "text"}}',
        "{not json: [",
        '{"strings": {"de": {"a": "conflict"}}, "diffusion": [{"name": "d", "source": "x", "hash": "H"}]}',
    ],
)
def test_a_bad_extras_file_is_skipped_whole(
    models: Path, tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path / "good.json", json.dumps({"strings": {"de": {"a": "gut"}}}))
    touch(tmp_path / "bad.json", content)

    with caplog.at_level(logging.WARNING):
        registry = ModelRegistry(models, [tmp_path / "good.json", tmp_path / "bad.json"])

    assert registry.strings() == {"de": {"a": "gut"}, "en": {"translation": {"model": {}}}}
    assert registry.model_hash("d") == "unknown"
    assert "skipping extras file" in caplog.text


def test_a_missing_extras_file_is_skipped(models: Path, tmp_path: Path) -> None:
    assert ModelRegistry(models, [tmp_path / "absent.json"]).strings() == {
        "en": {"translation": {"model": {}}}
    }


def test_model_hash_prefers_extras_then_hash_file(models: Path) -> None:
    touch(models / "extras.json", json.dumps(EXTRAS))
    touch(models / "stable-diffusion-onnx-v1-5" / "hash.txt", "ABC123\nsecond line\n")
    touch(models / "diffusion" / "anime" / "hash.txt", "  \n")
    registry = ModelRegistry(models)

    assert registry.model_hash("dreamshaper") == "879DB523C3"
    assert registry.model_hash("diffusion/dreamshaper") == "879DB523C3"
    assert registry.model_hash("stable-diffusion-onnx-v1-5") == "ABC123"
    assert registry.model_hash("diffusion/anime") == "unknown"
    assert registry.model_hash("diffusion-dreamshaper") == "unknown"
    assert registry.model_hash("../stable-diffusion-onnx-v1-5") == "ABC123"


def test_reload_picks_up_new_models_extras_and_wildcards(models: Path) -> None:
    registry = ModelRegistry(models)
    folder(models / "diffusion-new")
    touch(models / "wildcard" / "animals.txt", "cat\n")
    touch(
        models / "extras.json",
        json.dumps({"diffusion": [{"name": "diffusion-new", "label": "New", "source": "x"}]}),
    )

    assert "diffusion-new" not in registry.names("diffusion")
    registry.reload()

    assert "diffusion-new" in registry.names("diffusion")
    assert registry.wildcards() == {"animals": ("cat",)}
    assert registry.strings()["en"]["translation"]["model"] == {"diffusion-new": "New"}

"""``onnx-web models import``: an extras document converted offline into a models folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models.upscalers import DEMO_UPSCALERS, demo_checkpoint
from service.cli import main

TENSORS = {"layer.lora_down.weight": torch.ones(2, 4), "layer.lora_up.weight": torch.zeros(4, 2)}


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "sources"
    folder.mkdir()
    save_file(demo_checkpoint(DEMO_UPSCALERS[0]), str(folder / "esrgan.safetensors"))
    save_file(TENSORS, str(folder / "detail.safetensors"))
    torch.save(TENSORS, folder / "pickled.ckpt")
    return folder


def run_import(tmp_path: Path, sources: Path, document: dict[str, object], *flags: str) -> int:
    extras = tmp_path / "extras.json"
    extras.write_text(json.dumps(document))
    models = tmp_path / "models"
    return main(
        ["models", "import", str(extras), "--models", str(models), "--import-root", str(sources), *flags]
    )


def test_entries_are_converted_into_the_models_folder_and_a_bad_one_fails_alone(
    tmp_path: Path, sources: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "upscaling": [{"name": "esrgan", "source": "esrgan.safetensors", "scale": 4}],
        "networks": [
            {"name": "detail", "type": "lora", "source": "detail.safetensors"},
            {"name": "pickled", "type": "lora", "source": "pickled.ckpt"},
        ],
    }

    status = run_import(tmp_path, sources, document)

    assert status == 1
    models = tmp_path / "models"
    session = ort.InferenceSession(str(models / "upscaling-esrgan.onnx"), providers=["CPUExecutionProvider"])
    (upscaled,) = session.run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert upscaled.shape == (1, 3, 32, 32)
    assert load_file(str(models / "lora" / "detail.safetensors")).keys() == TENSORS.keys()
    assert not (models / "lora" / "pickled.safetensors").exists()
    assert "networks[1] (pickled): pickle_refused" in capsys.readouterr().err


def test_pickles_are_read_weights_only_when_allowed(tmp_path: Path, sources: Path) -> None:
    document = {"networks": [{"name": "pickled", "type": "lora", "source": "pickled.ckpt"}]}

    assert run_import(tmp_path, sources, document, "--allow-pickle") == 0

    converted = load_file(str(tmp_path / "models" / "lora" / "pickled.safetensors"))
    assert all(torch.equal(converted[key], value) for key, value in TENSORS.items())


def test_an_invalid_document_or_an_unknown_entry_converts_nothing(
    tmp_path: Path, sources: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_import(tmp_path, sources, {"networks": [{"name": "x", "source": "../x.safetensors"}]}) == 2
    assert "networks[0]" in capsys.readouterr().err
    document = {"networks": [{"name": "detail", "type": "lora", "source": "detail.safetensors"}]}
    assert run_import(tmp_path, sources, document, "--only", "other") == 2
    assert not (tmp_path / "models" / "lora").exists()

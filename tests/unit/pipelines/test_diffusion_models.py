"""The demo models: diffusers' ONNX layout, names, hashes, the extras file and the convert command."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import onnx
import pytest

from pipelines.models.cli import add_convert_arguments, run_convert
from pipelines.models.demo import (
    DEMO_MODELS,
    DEMO_PIX2PIX,
    DEMO_SD21,
    DEMO_SDXL,
    DEMO_UPSCALER,
    build_demo_models,
    merge_extras,
    torch_source_path,
)
from pipelines.models.layout import hash_component, read_model_hash
from pipelines.models.upscalers import DEMO_UPSCALERS

BASE, INPAINT = (model.name for model in DEMO_MODELS)
IO_NAMES = {
    # The demo encoder has two layers: ``clip_skip.2`` is its one skipped state (``<clip:skip:2>``).
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output", "clip_skip.2"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_encoder": (["sample"], ["latent_sample"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", [BASE, INPAINT])
def test_layout_and_io_names_are_diffusers_onnx(models_path: Path, name: str) -> None:
    folder = models_path / name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "OnnxStableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "OnnxRuntimeModel"]
    for component, (inputs, outputs) in IO_NAMES.items():
        graph = onnx.load(str(folder / component / "model.onnx"), load_external_data=False).graph
        assert [item.name for item in graph.input] == inputs
        assert [item.name for item in graph.output] == outputs
    tokenizer_files = sorted(path.name for path in (folder / "tokenizer").iterdir())
    assert tokenizer_files == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert (
        json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "PNDMScheduler"
    )


def test_unet_axes_are_dynamic_and_inpainting_takes_nine_channels(models_path: Path) -> None:
    base = onnx.load(str(models_path / BASE / "unet" / "model.onnx")).graph
    inpaint = onnx.load(str(models_path / INPAINT / "unet" / "model.onnx")).graph
    assert dims(base.input[0]) == ["batch", 4, "height", "width"]
    assert dims(inpaint.input[0]) == ["batch", 9, "height", "width"]
    assert dims(base.input[2]) == ["batch", "sequence", 32]
    assert base.input[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", [BASE, INPAINT, DEMO_SD21])
def test_hash_file_names_the_unet(models_path: Path, name: str) -> None:
    digest = read_model_hash(models_path / name)
    assert digest == hash_component(models_path / name / "unet")
    assert len(digest) == 10
    assert digest == digest.upper()
    assert read_model_hash(models_path / "missing") == "unknown"


def test_demo_models_are_listed_in_extras_beside_other_entries(models_path: Path, tmp_path: Path) -> None:
    extras = tmp_path / "extras.json"
    other = {"name": "upscaling-demo", "source": "demo", "scale": 4}
    extras.write_text(
        json.dumps({"upscaling": [other], "diffusion": [{"name": "diffusion-mine", "source": "x"}]})
    )
    merge_extras(extras, "diffusion", [{"name": BASE, "source": "demo"}])
    merge_extras(extras, "diffusion", [{"name": BASE, "source": "demo", "hash": "AB"}])
    assert json.loads(extras.read_text()) == {
        "upscaling": [other],
        "diffusion": [
            {"name": "diffusion-mine", "source": "x"},
            {"name": BASE, "source": "demo", "hash": "AB"},
        ],
    }
    listed = json.loads((models_path / "extras.json").read_text())["diffusion"]
    assert [entry["name"] for entry in listed] == [BASE, INPAINT, DEMO_SD21, DEMO_SDXL, DEMO_PIX2PIX]
    assert listed[0]["hash"] == read_model_hash(models_path / BASE)
    assert listed[1]["pipeline"] == "inpaint"


def test_build_keeps_existing_models_unless_forced(models_path: Path) -> None:
    unet = models_path / BASE / "unet" / "model.onnx"
    before = unet.stat().st_mtime_ns
    lines: list[str] = []
    names = [BASE, INPAINT, DEMO_SD21, DEMO_UPSCALER, DEMO_SDXL, DEMO_PIX2PIX]
    assert build_demo_models(models_path, progress=lines.append) == [models_path / name for name in names]
    assert unet.stat().st_mtime_ns == before
    assert lines == [f"{name}: already built" for name in names]


def test_convert_command_converts_a_diffusers_folder(
    models_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "checkpoint"
    shutil.copytree(torch_source_path(models_path, BASE), source)
    assert (
        run_convert(
            parse(["convert", "diffusers", str(source), "stable-diffusion-copy", "--models", str(tmp_path)])
        )
        == 0
    )
    converted = tmp_path / "stable-diffusion-copy"
    assert (converted / "model_index.json").is_file()
    assert not (tmp_path / "stable-diffusion-copy.partial").exists()
    # The same weights through the same exporter give the same UNet, hence the same hash.
    assert read_model_hash(converted) == read_model_hash(models_path / BASE)
    assert "exporting unet (2/4)" in capsys.readouterr().err


def test_convert_command_refuses_a_folder_that_is_not_diffusers(tmp_path: Path) -> None:
    assert run_convert(parse(["convert", "diffusers", str(tmp_path), "x", "--models", str(tmp_path)])) == 2
    assert not (tmp_path / "x").exists()


def test_convert_demo_command_builds_and_reports_every_demo_model(
    models_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``onnx-web convert demo`` (``make demo-models``) builds what ``onnx-web run`` builds: the
    diffusion models found in place, and the upscalers and face models as well."""
    folder = tmp_path / "models"
    shutil.copytree(models_path, folder)  # the diffusion models, found and not rebuilt
    assert run_convert(parse(["convert", "demo", "--models", str(folder)])) == 0
    names = [BASE, INPAINT, DEMO_SD21, DEMO_UPSCALER, DEMO_SDXL, DEMO_PIX2PIX]
    upscalers = [f"{demo.name}.onnx" for demo in DEMO_UPSCALERS]
    assert capsys.readouterr().out.split() == [str(folder / name) for name in names + upscalers]
    assert all((folder / name).is_file() for name in upscalers)

"""The model-based source filters at the api: offered and accepted only where their model is installed."""

from __future__ import annotations

import random
from pathlib import Path

import falcon
import falcon.testing
import pytest

from pipelines.models.registry import ModelRegistry
from service.chains import require_runnable
from service.config import Config
from service.errors import InvalidParams
from service.params import load_params_doc, parse_request, source_filters
from service.request_schema import GROUPS, RequestSchemas
from service.resources.settings import SettingsResources

CONFIG = Config()
DOC = load_params_doc(CONFIG)
WITH_HED = ["canny", "gaussian", "hed", "noise", "none", "scribble"]


def models_folder(root: Path, *annotators: str) -> Path:
    (root / "stable-diffusion-onnx-v1-5").mkdir(parents=True)
    for model in annotators:
        (root / "filter" / model).mkdir(parents=True)
        (root / "filter" / model / "model.onnx").write_bytes(b"")
    (root / "filter" / "half-copied").mkdir(parents=True, exist_ok=True)  # no model.onnx: not listed
    return root


def parse_img2img(registry: ModelRegistry, source_filter: str) -> str:
    data = {"model": "stable-diffusion-onnx-v1-5", "prompt": "x", "sourceFilter": source_filter}
    parsed = parse_request(
        "img2img", data, params_doc=DOC, registry=registry, config=CONFIG, rng=random.Random(0)
    )  # type: ignore[arg-type]
    assert parsed.img2img is not None
    return parsed.img2img.source_filter


def test_the_registry_lists_installed_annotator_models(tmp_path: Path) -> None:
    registry = ModelRegistry(models_folder(tmp_path, "hed", "depth"))
    assert registry.filter_models() == ("depth", "hed")
    assert source_filters(registry) == (
        "canny",
        "depth",
        "gaussian",
        "hed",
        "noise",
        "none",
        "normal",
        "scribble",
    )
    (tmp_path / "filter" / "segment").mkdir()
    (tmp_path / "filter" / "segment" / "model.onnx").write_bytes(b"")
    registry.reload()
    assert "segment" in source_filters(registry)


def test_a_filter_with_its_model_is_accepted_and_one_without_is_a_400_naming_the_field(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(models_folder(tmp_path, "hed"))
    assert parse_img2img(registry, "scribble") == "scribble"
    with pytest.raises(InvalidParams) as caught:
        parse_img2img(registry, "depth")
    assert caught.value.field == "sourceFilter"
    assert caught.value.rule == f'must be one of {", ".join(WITH_HED)}; got "depth"'


def test_settings_and_the_request_schema_offer_only_what_runs(tmp_path: Path) -> None:
    config = Config(models_path=tmp_path, default_platform="cpu")
    registry = ModelRegistry(models_folder(tmp_path, "hed"))
    app = falcon.App()
    SettingsResources(config, registry, load_params_doc(config), lambda: ["any", "cpu"]).register(app)
    response = falcon.testing.TestClient(app).simulate_get("/api/settings/filters")
    assert response.json["source"] == WITH_HED
    field = next(field for field in GROUPS["params"] if field.key == "sourceFilter")
    schema = RequestSchemas(config, DOC, registry).field_schema(field)
    assert schema["enum"] == [*WITH_HED, "", None]


def test_a_chain_filter_stage_without_its_model_is_refused_at_submit(tmp_path: Path) -> None:
    registry = ModelRegistry(models_folder(tmp_path, "hed"))
    chain = {"stages": [{"name": "edges", "type": "edit-filter", "params": {"filter": "hed", "seed": 1}}]}
    require_runnable(chain, registry, {"edges": "stages[0]"})
    chain["stages"][0]["params"]["filter"] = "openpose"
    with pytest.raises(InvalidParams) as caught:
        require_runnable(chain, registry, {"edges": "stages[0]"})
    assert caught.value.field == "stages[0].params.filter"
    assert "openpose needs its annotator model" in caught.value.rule and "hed, noise" in caught.value.rule

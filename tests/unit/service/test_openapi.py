"""``GET /api/openapi.json``: a valid OpenAPI 3.1 document of every route, generated from the code."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.inspect
import falcon.testing
import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import create_engine

from pipelines.models.registry import ModelRegistry
from pipelines.stages import stage_catalogue
from service.app import create_app
from service.config import Config
from service.jobs.keys import KeyStore
from service.jobs.store import JobStore
from service.openapi import openapi_path
from service.params import load_params_doc, parse_request
from service.resources.submit import SUBMIT_ROUTES
from service.storage import MemoryObjectStore

IMAGE_ROUTES = [route for route in SUBMIT_ROUTES if route != "chain"]
GROUP_KEYS = ("device", "params", "border", "upscale", "highres", "experimental")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "stable-diffusion-onnx-v1-5").mkdir(parents=True)
    (root / "upscaling-real-esrgan-x4-plus.onnx").write_text("")
    return root


def make_app(config: Config) -> falcon.App:
    # The engine connects lazily: building the app and its document needs no database.
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    return create_app(
        config,
        jobs=JobStore(engine, lease_s=30, affinity_window_s=0),
        store=MemoryObjectStore(),
        registry=ModelRegistry(config.models_path),
        platforms=lambda: ["any"],
        keys=KeyStore(engine) if config.auth == "keys" else None,
    )


def served_document(config: Config) -> dict[str, Any]:
    result = falcon.testing.TestClient(make_app(config)).simulate_get("/api/openapi.json")
    assert result.status_code == 200, result.text
    return dict(result.json)


@pytest.fixture
def document(models: Path) -> dict[str, Any]:
    return served_document(Config(models_path=models))


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(models: Path) -> None:
    app = make_app(Config(models_path=models))
    served = {
        (openapi_path(route.path), method.method.lower())
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }
    document = falcon.testing.TestClient(app).simulate_get("/api/openapi.json").json
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == served
    assert ("/api/openapi.json", "get") in documented


def test_introspection_lists_the_document(models: Path) -> None:
    routes = (
        falcon.testing.TestClient(make_app(Config(models_path=models))).simulate_get("/api").json["routes"]
    )
    assert {"path": "/api/openapi.json", "methods": ["GET", "HEAD", "OPTIONS"]} in routes


def test_each_operation_asks_for_what_its_resource_requires(models: Path) -> None:
    """Admin routes need the admin token or key; with API keys every other non-public route a key."""
    off = served_document(Config(models_path=models))["paths"]
    assert off["/api/worker/status"]["get"]["security"] == [{"adminToken": []}, {"bearer": []}]
    assert "401" in off["/api/worker/status"]["get"]["responses"]
    assert "security" not in off["/api/job/status"]["get"]
    keys_document = served_document(Config(models_path=models, auth="keys", cors_origins=("http://gui",)))
    validate(keys_document)
    keys = keys_document["paths"]
    assert keys["/api/job/status"]["get"]["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(keys["/api/txt2img"]["post"]["responses"])
    for public in ("/api/settings/params", "/api/openapi.json", "/healthz", "/", "/api"):
        assert "security" not in keys[public]["get"], public


def test_api_errors_are_documented_as_json(document: dict[str, Any]) -> None:
    responses = document["components"]["responses"]
    for status in ("400", "401", "404", "409", "413", "415", "429", "501", "503"):
        assert responses[status]["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
        }
    submit = document["paths"]["/api/txt2img"]["post"]["responses"]
    assert {"200", "400", "409", "413", "415", "429", "503"} <= set(submit)


def test_ranges_and_defaults_come_from_params_json(models: Path, tmp_path: Path) -> None:
    """An operator's params.json changes the document: nothing in it is a hand-written copy."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"steps": {"default": 10, "min": 2, "max": 50, "step": 1}}))
    document = served_document(Config(models_path=models, params_path=params, block_platforms=("cuda",)))
    request = document["components"]["schemas"]["ImageRequest"]["properties"]
    assert {key: request["steps"][key] for key in ("minimum", "maximum", "default")} == {
        "minimum": 2,
        "maximum": 50,
        "default": 10,
    }
    assert "cuda" not in request["platform"]["enum"]
    assert request["model"]["enum"] == ["stable-diffusion-onnx-v1-5", "", None]
    assert {"$ref": "#/components/parameters/steps"} in document["paths"]["/api/txt2img"]["post"][
        "parameters"
    ]
    assert document["components"]["parameters"]["steps"]["schema"]["maximum"] == 50


def test_each_stage_types_parameters_are_the_catalogues(document: dict[str, Any]) -> None:
    branches = document["components"]["schemas"]["ChainDocument"]["properties"]["stages"]["items"]["anyOf"]
    by_type = {branch["properties"]["type"]["const"]: branch for branch in branches}
    catalogue = stage_catalogue()
    assert set(by_type) == set(catalogue)
    for name, entry in catalogue.items():
        params = by_type[name]["properties"]["params"]["properties"]
        assert {key: params[key] for key in entry.get("params", {})} == entry.get("params", {})


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:api", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator({"$ref": f"urn:api#/components/schemas/{name}"}, registry=registry)


def test_request_schemas_accept_what_the_gui_sends_and_refuse_out_of_range(document: dict[str, Any]) -> None:
    txt2img = validator(document, "ImageRequest")
    gui = {
        "device": {"platform": "any"},
        "params": {"model": "stable-diffusion-onnx-v1-5", "steps": 25, "width": 512, "height": 512},
        "upscale": {"enabled": False, "upscaleOrder": "correction-first"},
        "highres": {"highres": False, "highresMethod": "lanczos"},
        "experimental": {"promptEditing": {"enabled": False, "promptFilter": "none"}},
    }
    txt2img.validate(gui)
    txt2img.validate({"prompt": "a cat", "steps": 30, "upscale": False, "highres": True})
    assert not txt2img.is_valid({"steps": 301})
    assert not txt2img.is_valid({"params": {"width": 513}})
    assert not txt2img.is_valid({"scheduler": "no-such-scheduler"})
    chain = validator(document, "ChainDocument")
    chain.validate(
        {
            "defaults": {"prompt": "a cat", "steps": 5},
            "stages": [
                {"name": "start", "type": "source-txt2img", "params": {"width": 128, "height": 128}},
                {"name": "grid", "type": "blend-grid", "params": {"width": 2, "height": 1}},
                {"name": "save", "type": "persist-disk", "params": {}},
            ],
        }
    )
    assert not chain.is_valid({"stages": [{"name": "x", "type": "source-txt2img", "params": {"steps": 0}}]})
    assert not chain.is_valid({"stages": [{"name": "x", "type": "no-such-stage", "params": {}}]})


class Recording(dict[str, Any]):
    """A request object that notes every key the parser looks up."""

    def __init__(self, read: set[str], *args: Any) -> None:
        super().__init__(*args)
        self.read = read

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def parse(route: str, data: dict[str, Any], models: Path) -> None:
    config = Config(models_path=models)
    parse_request(
        route,  # type: ignore[arg-type]
        data,
        params_doc=load_params_doc(config),
        registry=ModelRegistry(models),
        config=config,
        rng=random.Random(0),
    )


@pytest.fixture(params=IMAGE_ROUTES)
def route(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_the_flat_keys_documented_are_the_keys_the_parser_reads(
    route: str, models: Path, document: dict[str, Any]
) -> None:
    read: set[str] = set()
    parse(route, Recording(read), models)
    schema = document["components"]["schemas"]["ImageRequest"]
    assert read == set(schema["properties"])


def test_each_groups_keys_documented_are_the_keys_the_parser_reads(
    route: str, models: Path, document: dict[str, Any]
) -> None:
    schema = document["components"]["schemas"]["ImageRequest"]["properties"]
    groups = [key for key in GROUP_KEYS if key in schema]
    reads: dict[str, set[str]] = {key: set() for key in [*groups, "latentSymmetry", "promptEditing"]}
    data = {key: Recording(reads[key]) for key in groups}
    data["experimental"] = Recording(
        reads["experimental"],
        {name: Recording(reads[name]) for name in ("latentSymmetry", "promptEditing")},
    )
    parse(route, Recording(set(), data), models)
    for group in groups:
        documented = schema[group].get("properties") or schema[group]["anyOf"][1]["properties"]
        assert reads[group] == set(documented), group
    for name in ("latentSymmetry", "promptEditing"):
        assert reads[name] == set(schema["experimental"]["properties"][name]["properties"]), name

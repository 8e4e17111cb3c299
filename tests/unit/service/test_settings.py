"""``GET /api/settings/*`` response shapes (contract §5), on a bare Falcon app."""

from __future__ import annotations

import json
from pathlib import Path

import falcon
import falcon.testing
import pytest

from pipelines.models.registry import ModelRegistry
from service.config import Config
from service.params import PIPELINES_NOT_RUN, load_params_doc
from service.resources.settings import SettingsResources
from tests.contract import PIPELINES, SCHEDULERS


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "stable-diffusion-onnx-v1-5").mkdir(parents=True)
    (root / "upscaling-real-esrgan-x4-plus.onnx").write_text("")
    (root / "correction-codeformer.onnx").write_text("")
    (root / "lora").mkdir()
    (root / "lora" / "details.safetensors").write_text("")
    (root / "wildcard" / "colors").mkdir(parents=True)
    (root / "wildcard" / "animals.txt").write_text("cat\n")
    (root / "wildcard" / "colors" / "warm.txt").write_text("red\n")
    extras = {
        "networks": [
            {
                "name": "details",
                "label": "Detail Tweaker",
                "type": "lora",
                "source": "x",
                "tokens": ["detailed"],
            }
        ]
    }
    (root / "extras.json").write_text(json.dumps(extras))
    return root


@pytest.fixture
def client(models: Path) -> falcon.testing.TestClient:
    config = Config(models_path=models, default_platform="cpu")
    app = falcon.App()
    SettingsResources(
        config, ModelRegistry(models), load_params_doc(config), lambda: ["any", "cpu"]
    ).register(app)
    return falcon.testing.TestClient(app)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("masks", ["none", "gaussian-multiply", "gaussian-screen"]),
        ("noises", ["fill-edge", "fill-mask", "gaussian", "histogram", "normal", "uniform"]),
        # onnx-web's list less what this server does not run yet (contract §5.5 lists them all).
        ("pipelines", [name for name in PIPELINES if name not in PIPELINES_NOT_RUN]),
        ("platforms", ["any", "cpu"]),
        ("schedulers", SCHEDULERS),
        ("wildcards", ["animals", "colors/warm"]),
        (
            "filters",
            {
                "mask": ["none", "gaussian-multiply", "gaussian-screen"],
                "prompt": [
                    "AUTOMATIC/promptgen-lexart",
                    "AUTOMATIC/promptgen-majinai-safe",
                    "AUTOMATIC/promptgen-majinai-unsafe",
                    "Gustavosta/MagicPrompt-Stable-Diffusion",
                ],
                "source": ["canny", "gaussian", "noise", "none"],
            },
        ),
        (
            "models",
            {
                "correction": ["correction-codeformer"],
                "diffusion": ["stable-diffusion-onnx-v1-5"],
                "networks": [{"name": "details", "tokens": ["detailed"], "type": "lora"}],
                "upscaling": ["upscaling-real-esrgan-x4-plus"],
            },
        ),
        ("strings", {"en": {"translation": {"model": {"lora.details": "Detail Tweaker"}}}}),
    ],
)
def test_list_routes(client: falcon.testing.TestClient, path: str, expected: object) -> None:
    result = client.simulate_get(f"/api/settings/{path}")

    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json == expected


def test_params_is_the_document_with_the_platform_override(client: falcon.testing.TestClient) -> None:
    params = client.simulate_get("/api/settings/params").json

    assert params["version"] == "0.13.0"
    assert set(params["motd"]) == {"de", "en", "es", "fr"}
    assert params["platform"] == {"default": "cpu", "keys": []}
    assert params["steps"] == {"default": 25, "min": 1, "max": 300, "step": 1}
    assert params["promptEditing"]["filter"]["default"] == "none"
    assert params["latentSymmetry"]["gradientEnd"]["default"] == 0.25


def test_head_answers_without_a_body(client: falcon.testing.TestClient) -> None:
    result = client.simulate_head("/api/settings/models")

    assert result.status_code == 200
    assert result.content == b""


def test_post_is_not_allowed(client: falcon.testing.TestClient) -> None:
    assert client.simulate_post("/api/settings/params").status_code == 405


def test_models_follow_a_registry_reload(models: Path) -> None:
    config = Config(models_path=models)
    registry = ModelRegistry(models)
    app = falcon.App()
    SettingsResources(config, registry, load_params_doc(config), lambda: ["any"]).register(app)
    (models / "diffusion-new").mkdir()

    registry.reload()

    assert falcon.testing.TestClient(app).simulate_get("/api/settings/models").json["diffusion"] == [
        "diffusion-new",
        "stable-diffusion-onnx-v1-5",
    ]


def test_routes_lists_every_registered_path(models: Path) -> None:
    config = Config(models_path=models)
    settings = SettingsResources(config, ModelRegistry(models), load_params_doc(config), lambda: ["any"])
    app = falcon.App()
    settings.register(app)

    for path, methods in settings.routes():
        assert methods == ["GET", "HEAD"]
        assert falcon.testing.TestClient(app).simulate_get(path).status_code == 200
    assert len(settings.routes()) == 12


def test_stages_are_generated_from_their_declarations(client: falcon.testing.TestClient) -> None:
    stages = client.simulate_get("/api/settings/stages").json
    assert stages["blend-img2img"]["params"]["strength"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 0.5,
    }
    assert stages["blend-img2img"]["tileable"] and stages["blend-img2img"]["groups"] == ["image"]
    assert stages["upscale-simple"]["params"]["method"] == {
        "enum": ["bilinear", "lanczos"],
        "default": "lanczos",
    }
    assert stages["blend-mask"]["needs"] == ["source", "mask"]
    assert stages["upscale-resrgan"]["model"] == "upscaling"
    assert stages["edit-safety"]["available"] and stages["upscale-highres"] == {"available": True}
    assert "text-generate" not in stages  # the txt2txt route's own stage is no chain stage

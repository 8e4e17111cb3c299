"""``pipeline=controlnet`` at submit: what cannot run is a 400 naming the field, before any job exists.

The models folder is the api's view only (no weights): an SD model converted with its ``cnet``
UNet, one without, an SDXL model with one, and an SD 1.x and an SDXL ControlNet.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import urllib3
from PIL import Image

from service.jobs.store import JobStore
from service.storage import ObjectStore
from tests.integration.api import api_client, error_of, make_models

pytestmark = pytest.mark.integration

SD_MODEL = "stable-diffusion-onnx-v1-5"
PLAIN_MODEL = "stable-diffusion-plain"
SDXL_MODEL = "diffusion-sdxl-base"


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = make_models(tmp_path / "models")
    (root / SD_MODEL / "cnet").mkdir()
    (root / SD_MODEL / "cnet" / "model.onnx").write_bytes(b"")
    (root / PLAIN_MODEL).mkdir()
    (root / SDXL_MODEL / "cnet").mkdir(parents=True)
    (root / SDXL_MODEL / "cnet" / "model.onnx").write_bytes(b"")
    (root / SDXL_MODEL / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline"})
    )
    for name, config in (("canny", {}), ("canny-xl", {"addition_embed_type": "text_time"})):
        (root / "control" / name).mkdir(parents=True)
        (root / "control" / name / "config.json").write_text(
            json.dumps({"_class_name": "ControlNetModel", **config})
        )
    return root


@pytest.fixture
def client(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> falcon.testing.TestClient:
    return api_client(job_store, object_store, models, tmp_path)


def img2img(client: falcon.testing.TestClient, **params: Any) -> falcon.testing.Result:
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(source, format="PNG")
    fields = {
        "json": json.dumps({"params": {"prompt": "a cat", "steps": 3, "pipeline": "controlnet", **params}}),
        "source": ("s.png", source.getvalue(), "image/png"),
    }
    body, content_type = urllib3.encode_multipart_formdata(fields)
    return client.simulate_post("/api/img2img", body=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"control": "nope"}, "control", ('no ControlNet "nope"', "available: canny, canny-xl")),
        ({}, "control", ("pipeline controlnet needs a ControlNet", "available: canny, canny-xl")),
        (
            {"control": "canny", "model": PLAIN_MODEL},
            "model",
            (f"{PLAIN_MODEL} has no ControlNet UNet", f"models with one: {SDXL_MODEL}, {SD_MODEL}"),
        ),
        ({"control": "canny-xl"}, "control", ("ControlNet canny-xl is for SDXL models", "for it: canny")),
        (
            {"control": "canny", "model": SDXL_MODEL},
            "control",
            ("is for Stable Diffusion 1.x/2.x", "canny-xl"),
        ),
    ],
)
def test_a_controlnet_that_cannot_run_is_a_400_naming_the_field(
    client: falcon.testing.TestClient,
    job_store: JobStore,
    params: dict[str, Any],
    field: str,
    words: tuple[str, ...],
) -> None:
    result = img2img(client, **params)
    assert result.status_code == 400, result.text
    error = error_of(result)
    assert error.startswith(f"{field}: "), error
    for word in words:
        assert word in error, error
    assert job_store.queue_depth() == 0


def test_a_controlnet_that_fits_its_model_is_queued(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    assert img2img(client, control="canny").status_code == 200
    assert img2img(client, control="canny-xl", model=SDXL_MODEL).status_code == 200
    assert job_store.queue_depth() == 2


def test_controlnet_runs_on_the_img2img_route_only(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2img", params={"pipeline": "controlnet", "control": "canny"})
    assert result.status_code == 400
    assert error_of(result).startswith("pipeline: controlnet does not run on txt2img"), error_of(result)
    stage = {"name": "a", "type": "source-txt2img", "params": {"pipeline": "controlnet", "control": "canny"}}
    result = client.simulate_post("/api/chain", json={"stages": [stage]})
    assert result.status_code == 400
    assert error_of(result).startswith(
        "stages[0].params.pipeline: controlnet runs in blend-img2img, not in source-txt2img"
    ), result.text

"""The api in-process (Falcon's test client) on a real Postgres and a real S3 server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from service.jobs.store import JobStore
from service.storage import ObjectStore
from tests.contract import SCHEDULERS
from tests.integration.api import ADMIN_TOKEN, api_client, error_of, make_models

pytestmark = pytest.mark.integration


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return make_models(tmp_path / "models")


@pytest.fixture
def client(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> falcon.testing.TestClient:
    return api_client(job_store, object_store, models, tmp_path)


def test_introspection_lists_every_documented_route(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/api")
    assert result.status_code == 200
    routes = {route["path"]: route["methods"] for route in result.json["routes"]}
    assert result.json["name"] == "onnx-web"
    for path in [
        "/",
        "/:filename",
        "/output/:filename",
        "/api",
        "/api/job",
        "/api/job/cancel",
        "/api/job/status",
        "/api/settings/filters",
        "/api/settings/masks",
        "/api/settings/models",
        "/api/settings/noises",
        "/api/settings/params",
        "/api/settings/pipelines",
        "/api/settings/platforms",
        "/api/settings/schedulers",
        "/api/settings/strings",
        "/api/settings/wildcards",
        "/api/img2img",
        "/api/txt2img",
        "/api/txt2txt",
        "/api/inpaint",
        "/api/upscale",
        "/api/chain",
        "/api/blend",
        "/api/cancel",
        "/api/ready",
    ]:
        assert path in routes, path
    assert "POST" in routes["/api/txt2img"] and "GET" in routes["/api/job/status"]


def test_settings_shapes(client: falcon.testing.TestClient) -> None:
    params = client.simulate_get("/api/settings/params").json
    assert params["steps"] == {"default": 25, "min": 1, "max": 300, "step": 1}
    assert params["version"].startswith("0.")
    assert client.simulate_get("/api/settings/schedulers").json == SCHEDULERS
    models = client.simulate_get("/api/settings/models").json
    assert models["diffusion"] == ["stable-diffusion-onnx-v1-5"]
    assert models["upscaling"] == ["upscaling-real-esrgan-x4-plus"]
    assert client.simulate_get("/api/settings/wildcards").json == ["animals"]
    platforms = client.simulate_get("/api/settings/platforms").json
    assert platforms[0] == "any" and "cpu" in platforms
    assert set(client.simulate_get("/api/settings/filters").json) == {"mask", "prompt", "source"}


def submit(client: falcon.testing.TestClient, **params: Any) -> falcon.testing.Result:
    return client.simulate_post("/api/txt2img", params={k: str(v) for k, v in params.items()})


def test_submission_answers_the_job_record_and_status_finds_it(client: falcon.testing.TestClient) -> None:
    result = submit(client, prompt="a cat", steps=3, seed=5)
    assert result.status_code == 200, result.text
    job = result.json
    assert job["status"] == "pending"
    assert job["queue"] == {"current": 1, "total": 1}  # 1-based in the submit answer (contract §4.3)
    assert job["steps"]["total"] == 3 + 1 and job["stages"]["total"] == 2  # txt2img, then save
    second = submit(client, prompt="a dog", steps=3).json
    assert second["queue"] == {"current": 2, "total": 2}
    status = client.simulate_get(
        "/api/job/status", params={"jobs": f"{job['name']},{second['name']},nope"}
    ).json
    assert [record["name"] for record in status] == [job["name"], second["name"], "nope"]
    assert status[1]["queue"] == {"current": 1, "total": 2}
    assert status[2]["status"] == "unknown"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"steps": 301}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": "7.5"}, "steps"),
        ({"cfg": "31"}, "cfg"),
        ({"width": 513}, "width"),
        ({"width": 64}, "width"),
        ({"batch": 6}, "batch"),
        ({"seed": -2}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"scheduler": "nope"}, "scheduler"),
        ({"model": "missing-model"}, "model"),
        ({"tiled_vae": "maybe"}, "tiled_vae"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: falcon.testing.TestClient, params: dict, field: str
) -> None:
    result = submit(client, prompt="x", **params)
    assert result.status_code == 400, result.text
    assert error_of(result).startswith(field), result.json


def test_a_malformed_prompt_is_a_400_naming_the_field_and_position(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    result = submit(client, prompt="a (cat:1.2", steps=3)
    assert result.status_code == 400, result.text
    assert error_of(result).startswith("prompt") and "at character 10" in error_of(result)
    result = submit(client, prompt="a cat", negativePrompt="blurry, [ugly", steps=3)
    assert result.status_code == 400, result.text
    assert error_of(result).startswith("negativePrompt") and "at character 8" in error_of(result)
    stage = {"name": "a", "type": "source-txt2img", "params": {"prompt": "a cat || (dog"}}
    result = client.simulate_post("/api/chain", json={"stages": [stage]})
    assert result.status_code == 400, result.text
    assert error_of(result).startswith("stages[0].params.prompt") and "at character 9" in error_of(result)
    assert job_store.queue_depth() == 0
    assert submit(client, prompt="a (cat:1.2), [dim] \\(literal\\)", steps=3).status_code == 200


def test_a_pipeline_of_another_route_is_a_400_and_nothing_is_queued(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    result = submit(client, prompt="a cat", steps=3, pipeline="img2img")
    assert result.status_code == 400, result.text
    assert error_of(result).startswith("pipeline: img2img does not run on txt2img; txt2img runs: txt2img")
    result = submit(client, prompt="a cat", steps=3, pipeline="pix2pix")
    assert error_of(result).startswith("pipeline: pix2pix does not run on txt2img; txt2img runs: ")
    stage = {"name": "a", "type": "source-txt2img", "params": {"prompt": "a cat", "pipeline": "controlnet"}}
    result = client.simulate_post("/api/chain", json={"stages": [stage]})
    assert result.status_code == 400 and error_of(result).startswith("stages[0].params.pipeline"), result.text
    assert job_store.queue_depth() == 0


def test_a_network_that_is_not_there_is_a_400_listing_those_that_are(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    (models / "lora").mkdir(exist_ok=True)
    (models / "lora" / "details.safetensors").write_bytes(b"")
    client = api_client(job_store, object_store, models, tmp_path)
    result = submit(client, prompt="a cat <lora:detials:0.5>", steps=3)
    assert result.status_code == 400, result.text
    assert error_of(result) == "prompt: no LoRA named 'detials'; available: details"
    result = submit(client, prompt="a cat", negativePrompt="<inversion:ugly:1>", steps=3)
    assert error_of(result) == "negativePrompt: no textual inversion named 'ugly'; available: none"
    stage = {"name": "a", "type": "source-txt2img", "params": {"prompt": "x || y <lora:gone:1>"}}
    result = client.simulate_post("/api/chain", json={"stages": [stage]})
    assert error_of(result).startswith("stages[0].params.prompt: no LoRA named 'gone'"), result.text
    assert job_store.queue_depth() == 0
    assert submit(client, prompt="a cat <lora:details:0.5>", steps=3).status_code == 200


def test_a_panorama_region_outside_the_image_is_a_400_and_nothing_is_queued(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    wide = {"steps": 3, "width": 768, "height": 256, "pipeline": "panorama"}
    result = submit(client, prompt="a coast <region:0:256:128:1024:4:0.2:a lighthouse>", **wide)
    assert result.status_code == 400, result.text
    assert error_of(result) == (
        "prompt: region 'a lighthouse': the rectangle (0, 256, 128, 1024) is outside the 768x256 image"
    )
    result = submit(client, prompt="a coast <reseed:0:0:60:64:3>", **wide)
    assert error_of(result).startswith("prompt: reseed 3: top, left, bottom and right must be multiples of 8")
    assert job_store.queue_depth() == 0
    inside = "a coast <region:0:256:128:512:4:0.2:a lighthouse>"
    assert submit(client, prompt=inside, **wide).status_code == 200


def test_a_wildcard_that_breaks_the_prompt_syntax_is_a_400(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    (models / "wildcard" / "open.txt").write_text("(unclosed\n")
    client = api_client(job_store, object_store, models, tmp_path)
    result = submit(client, prompt="a __open__ cat", steps=3)
    assert result.status_code == 400, result.text
    assert error_of(result).startswith("prompt") and "after wildcards were expanded" in error_of(result)


def test_nothing_is_queued_for_rejected_input(client: falcon.testing.TestClient, job_store: JobStore) -> None:
    assert submit(client, steps=1000).status_code == 400
    assert job_store.queue_depth() == 0


def test_malformed_json_body_is_a_json_400(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2img", body="{nope", headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    error_of(result)


def test_txt2txt_without_a_text_model_is_a_400_naming_model(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2txt", params={"prompt": "x"})
    assert result.status_code == 400
    assert "no text model" in error_of(result)


def test_status_and_cancel_take_one_to_ten_names(client: falcon.testing.TestClient) -> None:
    for path, method in (("/api/job/status", client.simulate_get), ("/api/job/cancel", client.simulate_put)):
        assert method(path).status_code == 400
        too_many = ",".join(f"job-{i}" for i in range(11))
        result = method(path, params={"jobs": too_many})
        assert result.status_code == 400 and "too many" in error_of(result)


def test_a_repeated_query_parameter_counts_its_first_value_as_submissions_do(
    client: falcon.testing.TestClient,
) -> None:
    submitted = client.simulate_post("/api/txt2img", query_string="prompt=x&steps=2&steps=3")
    assert submitted.json["steps"]["total"] == 2 + 1
    name = submitted.json["name"]

    status = client.simulate_get("/api/job/status", query_string=f"jobs={name}&jobs=ghost").json
    cancel = client.simulate_put("/api/job/cancel", query_string=f"jobs={name}&jobs=ghost").json
    ready = client.simulate_get("/api/ready", query_string=f"output={name}&output=ghost").json

    assert [(record["name"], record["status"]) for record in status] == [(name, "pending")]
    assert cancel == [{"name": name, "status": "cancelled"}]
    assert ready["cancelled"] is True


def test_cancel_answers_each_jobs_true_state(client: falcon.testing.TestClient) -> None:
    name = submit(client, prompt="x", steps=2).json["name"]
    result = client.simulate_put("/api/job/cancel", params={"jobs": f"{name},ghost"})
    assert result.status_code == 200
    assert result.json == [{"name": name, "status": "cancelled"}, {"name": "ghost", "status": "unknown"}]
    assert client.simulate_get("/api/job/status", params={"jobs": name}).json[0]["status"] == "cancelled"


def test_legacy_ready_and_cancel(client: falcon.testing.TestClient) -> None:
    name = submit(client, prompt="x", steps=2).json["name"]
    assert client.simulate_get("/api/ready", params={"output": name}).json == {
        "cancelled": False,
        "failed": False,
        "pending": True,
        "progress": 0,
        "ready": False,
    }
    assert client.simulate_put("/api/cancel", params={"output": name}).json["cancelled"] is True
    assert client.simulate_get("/api/ready").status_code == 400


def test_chain_document_errors_name_the_path(client: falcon.testing.TestClient) -> None:
    bad = {"stages": [{"name": "a", "type": "source-txt2img", "params": {"steps": [1]}}]}
    result = client.simulate_post("/api/chain", json=bad)
    assert result.status_code == 400 and error_of(result).startswith("stages[0].params.steps")
    unknown = {"stages": [{"name": "a", "type": "no-such-stage", "params": {}}]}
    result = client.simulate_post("/api/job", json=unknown)
    assert result.status_code == 400 and error_of(result).startswith("stages[0].type")
    out_of_range = {"stages": [{"name": "a", "type": "source-txt2img", "params": {"steps": 999}}]}
    result = client.simulate_post("/api/job", json=out_of_range)
    assert result.status_code == 400 and "steps" in error_of(result)


def test_chain_with_defaults_is_queued_with_resolved_seed(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    doc = {
        "defaults": {"prompt": "a magical wizard", "seed": -1, "width": 128, "height": 128, "steps": 3},
        "stages": [
            {"name": "start", "type": "source-txt2img", "params": {"tiles": "hd8k"}},
            {"name": "grow", "type": "upscale-simple", "params": {"method": "lanczos", "scale": 2}},
            {"name": "save", "type": "persist-disk", "params": {}},
        ],
    }
    result = client.simulate_post("/api/job", json=doc)
    assert result.status_code == 200, result.text
    assert result.json["name"].startswith("chain_")
    assert result.json["stages"]["total"] == 3
    assert result.json["steps"]["total"] == 3 + 1 + 1


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../etc/passwd",
        "css/../../secret",
        "%2e%2e%2fetc%2fpasswd",
        "%252e%252e%252f",
        "..%5c..%5cwin.ini",
        ".%00ssh",
        "~",
        "x.png.",
        "a\tb",
        "x" * 300,
        "\ufffd",
        "//etc/passwd",
        "txt2img_1_" + "0" * 64 + "_1_0.png",
        "txt2img_1_" + "0" * 64 + "_1_0.png/../../x",
    ],
)
def test_output_path_traversal_is_refused(client: falcon.testing.TestClient, path: str) -> None:
    result = client.simulate_get(f"/output/{path}")
    assert 400 <= result.status_code < 500, (path, result.status_code)


@pytest.mark.parametrize(
    "path", ["../pyproject.toml", "..%2fpyproject.toml", "a/../../x", "%00", "bundle/..", "x\\y"]
)
def test_bundle_path_traversal_is_refused(client: falcon.testing.TestClient, path: str) -> None:
    assert client.simulate_get(f"/{path}").status_code == 404


def test_api_docs_page_comes_from_the_bundle_under_the_gui_policy(
    client: falcon.testing.TestClient, tmp_path: Path
) -> None:
    unbuilt = client.simulate_get("/api/docs")
    assert unbuilt.status_code == 200 and 'href="openapi.json"' in unbuilt.text
    page = tmp_path / "bundle" / "api-docs" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html><title>reference</title>")

    built = client.simulate_get("/api/docs")

    assert built.status_code == 200 and built.text == "<!doctype html><title>reference</title>"
    assert built.headers["content-type"].startswith("text/html")
    policy = built.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_gui_placeholder_and_json_404(client: falcon.testing.TestClient) -> None:
    index = client.simulate_get("/")
    assert index.status_code == 200 and "onnx-web" in index.text
    missing = client.simulate_get("/api/whatever")
    assert missing.status_code == 404
    error_of(missing)
    wrong_method = client.simulate_get("/api/txt2img")
    assert wrong_method.status_code == 405
    error_of(wrong_method)


def test_request_body_over_the_cap_is_refused_before_reading(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/api/txt2img", body=b"x", headers={"Content-Length": str(10**9), "Content-Type": "application/json"}
    )
    assert result.status_code == 413


def test_idempotency_key_returns_the_same_job(client: falcon.testing.TestClient) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    body = json.dumps({"prompt": "once", "steps": 2})
    first = client.simulate_post(
        "/api/txt2img", body=body, headers={**headers, "Content-Type": "application/json"}
    )
    again = client.simulate_post(
        "/api/txt2img", body=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert first.status_code == again.status_code == 200
    assert first.json["name"] == again.json["name"]
    other = json.dumps({"prompt": "twice", "steps": 2})
    conflict = client.simulate_post(
        "/api/txt2img", body=other, headers={**headers, "Content-Type": "application/json"}
    )
    assert conflict.status_code == 409


def test_admin_routes_need_the_token(client: falcon.testing.TestClient, job_store: JobStore) -> None:
    for path, method in (
        ("/api/worker/status", client.simulate_get),
        ("/api/worker/restart", client.simulate_post),
        ("/api/extras", client.simulate_get),
    ):
        assert method(path).status_code == 401
        assert method(path, params={"token": "wrong"}).status_code == 401
    job_store.announce_worker(
        "w-1", platform="cuda", providers=["CUDAExecutionProvider"], models=["m"], version="v", jobs_done=3
    )
    status = client.simulate_get("/api/worker/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status.status_code == 200
    assert status.json["workers"] == [["cuda", 3, True]]
    assert client.simulate_get("/api/settings/platforms").json == ["any", "cuda"]
    restart = client.simulate_post("/api/worker/restart", params={"token": ADMIN_TOKEN})
    assert restart.status_code == 200
    assert job_store.announce_worker(
        "w-1", platform="cuda", providers=[], models=[], version="v", jobs_done=3
    )


@pytest.mark.parametrize("path", ["/api/extras", "/api/worker/status", "/healthz", "/readyz", "/metrics"])
def test_head_answers_as_get_does_without_a_body(client: falcon.testing.TestClient, path: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    got = client.simulate_get(path, headers=admin)
    head = client.simulate_head(path, headers=admin)

    assert head.status_code == got.status_code == 200, head.text
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""
    routes = {route["path"]: route["methods"] for route in client.simulate_get("/api").json["routes"]}
    assert "HEAD" in routes[path]
    if path.startswith("/api"):
        assert client.simulate_head(path).status_code == 401


def test_worker_status_shows_each_workers_cuda_device(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    for worker_id, device in (("gpu-0", 0), ("gpu-2", 2), ("cpu", None)):
        job_store.announce_worker(
            worker_id,
            platform="cuda" if device is not None else "cpu",
            device=device,
            providers=[],
            models=[],
            version="v",
            jobs_done=0,
        )
    # A worker moved to another device (restarted with a new --device) is shown on its new one.
    job_store.announce_worker(
        "gpu-0", platform="cuda", device=1, providers=[], models=[], version="v", jobs_done=0
    )

    status = client.simulate_get("/api/worker/status", params={"token": ADMIN_TOKEN})

    assert status.status_code == 200
    assert {detail["id"]: detail["device"] for detail in status.json["details"]} == {
        "gpu-0": 1,
        "gpu-2": 2,
        "cpu": None,
    }

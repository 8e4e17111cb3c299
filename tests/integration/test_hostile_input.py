"""Hostile and broken requests get a short JSON 4xx, and an outage a 503, never a 500.

Each case here answered 500, was silently misread, or cost far more than its size before the
hardening pass (issue "Hardening", item 1 and 4).
"""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
import sqlalchemy
import urllib3
from PIL import Image

from service.breaker import Breaker
from service.db import make_engine
from service.jobs.store import JobStore
from service.storage import ObjectStore, RetryPolicy, S3ObjectStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S
from tests.integration.api import api_client, error_of, make_models

pytestmark = pytest.mark.integration

SDXL_MODEL = "diffusion-sdxl-base"
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = make_models(tmp_path / "models")
    (root / SDXL_MODEL).mkdir()
    (root / SDXL_MODEL / "model_index.json").write_text(json.dumps(SDXL_INDEX))
    return root


@pytest.fixture
def client(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> falcon.testing.TestClient:
    return api_client(job_store, object_store, models, tmp_path, max_body_bytes=2 * 1024 * 1024)


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, content_type = urllib3.encode_multipart_formdata(fields)
    return body, {"Content-Type": content_type}


def post_multipart(
    client: falcon.testing.TestClient, path: str, fields: dict[str, Any], **options: Any
) -> falcon.testing.Result:
    body, headers = multipart(fields)
    return client.simulate_post(path, body=body, headers={**headers, **options.pop("headers", {})}, **options)


def post_chunked(
    client: falcon.testing.TestClient, path: str, body: bytes, content_type: str
) -> tuple[str, dict[str, Any]]:
    """POST ``body`` as a chunked request: no Content-Length, as gunicorn hands such a body on."""
    env = falcon.testing.create_environ(
        path=path,
        method="POST",
        body=body,
        headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"},
    )
    env.pop("CONTENT_LENGTH", None)
    start = falcon.testing.StartResponseMock()
    answer = b"".join(client.app(env, start))
    return start.status, json.loads(answer)


def steps_total_of(client: falcon.testing.TestClient, steps: int) -> int:
    """The ``steps.total`` of a txt2img job of ``steps`` sent in the query string."""
    result = client.simulate_post("/api/txt2img", params={"steps": str(steps)})
    assert result.status_code == 200, result.text
    return int(result.json["steps"]["total"])


def assert_refused(result: falcon.testing.Result, status: int, *words: str) -> str:
    assert result.status_code == status, result.text
    error = error_of(result)
    for word in words:
        assert word in error, error
    assert len(result.text) < 1000
    return error


# --- strings Postgres cannot store -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\x00b", "x\ud800"])
def test_nul_and_lone_surrogates_in_a_json_prompt_are_a_400(
    client: falcon.testing.TestClient, text: str
) -> None:
    body = json.dumps({"prompt": text, "negativePrompt": "ok"}).encode()
    result = client.simulate_post("/api/txt2img", body=body, headers={"Content-Type": "application/json"})

    assert_refused(result, 400, "prompt")


def test_nul_in_a_query_string_is_a_400_on_any_route(client: falcon.testing.TestClient) -> None:
    assert_refused(client.simulate_post("/api/txt2img", query_string="prompt=a%00b"), 400, "prompt", "NUL")
    assert_refused(client.simulate_get("/api/job/status", query_string="jobs=a%00"), 400, "jobs")
    assert_refused(client.simulate_put("/api/job/cancel", query_string="jobs=a%00"), 400, "jobs")


def test_a_query_escape_that_is_not_utf8_is_a_400_on_any_route(client: falcon.testing.TestClient) -> None:
    rule = "must be UTF-8"
    assert_refused(client.simulate_get("/api/job/status", query_string="jobs=a%ff"), 400, "jobs", rule)
    assert_refused(client.simulate_put("/api/job/cancel", query_string="jobs=%c3"), 400, "jobs", rule)
    assert_refused(
        client.simulate_get("/api/settings/models", query_string="x%fe=1"), 400, "parameter name", rule
    )


def test_nul_in_a_multipart_json_field_and_in_a_chain_is_a_400(client: falcon.testing.TestClient) -> None:
    form = {
        "json": json.dumps({"params": {"negativePrompt": "bad\x00"}}),
        "source": ("s.png", png(), "image/png"),
    }
    assert_refused(post_multipart(client, "/api/img2img", form), 400, "negativePrompt")
    chain = {"stages": [{"name": "a\x00", "type": "source-txt2img", "params": {}}]}
    assert_refused(client.simulate_post("/api/job", json=chain), 400, "stages[0].name")


# --- documents that cost more than their size ------------------------------------------------------


def test_json_nested_a_thousand_deep_is_a_400(client: falcon.testing.TestClient) -> None:
    body = ("[" * 1000 + "]" * 1000).encode()
    for path in ("/api/txt2img", "/api/job"):
        result = client.simulate_post(path, body=body, headers={"Content-Type": "application/json"})
        assert_refused(result, 400, "deep")


def test_a_yaml_alias_bomb_in_a_chain_field_is_a_short_400(client: falcon.testing.TestClient) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    result = post_multipart(client, "/api/chain", {"chain": "\n".join([*lines, "stages: *a8"])})

    assert_refused(result, 400, "chain", "aliases")


def test_a_huge_chain_is_refused_without_echoing_it(client: falcon.testing.TestClient) -> None:
    stages = [{"name": f"s{index}", "type": "source-noise", "params": {}} for index in range(2000)]
    result = client.simulate_post("/api/job", json={"stages": stages})

    assert_refused(result, 400, "stages", "at most 50")


def test_unused_uploads_are_never_decoded(client: falcon.testing.TestClient) -> None:
    """A txt2img request carrying image parts: only headers are read, so corrupt pixels pass."""
    truncated = png((512, 512))[:200]
    form = {
        "json": json.dumps({"params": {"prompt": "cat", "steps": 3}}),
        **{f"source:s{index}": (f"{index}.png", truncated, "image/png") for index in range(8)},
    }
    result = post_multipart(client, "/api/txt2img", form)

    assert result.status_code == 200, result.text


def test_a_used_upload_with_corrupt_pixels_is_a_400(client: falcon.testing.TestClient) -> None:
    form = {
        "json": json.dumps({"params": {"prompt": "cat"}}),
        "source": ("s.png", png((512, 512))[:200], "image/png"),
    }

    assert_refused(post_multipart(client, "/api/img2img", form), 400, "source")


@pytest.mark.parametrize("data", [b"not an image at all", png((512, 512))[:200]])
def test_an_upload_that_is_no_image_is_a_400_without_internals(
    client: falcon.testing.TestClient, data: bytes
) -> None:
    form = {"json": json.dumps({"params": {"prompt": "cat"}}), "source": ("s.png", data, "image/png")}

    error = assert_refused(post_multipart(client, "/api/img2img", form), 400, "source", "PNG, JPEG or WebP")

    assert "0x" not in error and "BytesIO" not in error and "_io" not in error, error


def test_a_source_of_one_pixel_is_a_400_at_submit(client: falcon.testing.TestClient) -> None:
    form = {"json": json.dumps({"params": {"prompt": "cat"}}), "source": ("s.png", png((1, 1)), "image/png")}

    assert_refused(post_multipart(client, "/api/img2img", form), 400, "source", "at least 8x8")


def test_the_published_limits_are_those_enforced(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    """``GET /api/settings/limits`` answers this api's bounds: one past each is refused, one at it is not."""
    client = api_client(
        job_store,
        object_store,
        models,
        tmp_path,
        max_body_bytes=300_000,
        max_image_pixels=512 * 512,
        max_output_pixels=1024 * 1024,
    )
    limits = client.simulate_get("/api/settings/limits").json
    assert limits == {
        "maxBodyBytes": 300_000,
        "maxImagePixels": 512 * 512,
        "maxImageSide": 8192,
        "maxOutputPixels": 1024 * 1024,
    }

    def img2img(size: tuple[int, int], **params: Any) -> falcon.testing.Result:
        form = {
            "json": json.dumps({"params": {"prompt": "cat", "steps": 1, **params}}),
            "source": ("s.png", png(size), "image/png"),
        }
        return post_multipart(client, "/api/img2img", form)

    assert img2img((512, 512)).status_code == 200
    assert_refused(img2img((520, 512)), 413, "source", str(limits["maxImagePixels"]))
    highres = {"steps": "1", "highres": "true", "highresMethod": "lanczos"}
    assert client.simulate_post("/api/txt2img", params={**highres, "highresScale": "2"}).status_code == 200
    grown = client.simulate_post("/api/txt2img", params={**highres, "highresScale": "3"})
    assert_refused(grown, 400, str(limits["maxOutputPixels"]))
    body = b"x" * (limits["maxBodyBytes"] + 1)
    over = client.simulate_post("/api/txt2img", body=body, headers={"Content-Type": "text/plain"})
    assert_refused(over, 413, str(limits["maxBodyBytes"]))


# --- bodies that were misread ---------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png"])
def test_a_body_of_an_unsupported_type_is_a_415(client: falcon.testing.TestClient, content_type: str) -> None:
    result = client.simulate_post(
        "/api/txt2img", body=b'{"steps": 3}', headers={"Content-Type": content_type}
    )

    assert_refused(result, 415, "application/json", "multipart/form-data")


def test_media_types_are_read_without_case(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/api/txt2img", body=b'{"steps": 7}', headers={"Content-Type": "Application/JSON; charset=UTF-8"}
    )

    assert result.status_code == 200, result.text
    assert result.json["steps"]["total"] == steps_total_of(client, 7)


def test_a_form_body_is_read_like_a_query_string(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/api/txt2img",
        body=b"steps=6&prompt=cat",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert result.status_code == 200, result.text
    assert result.json["steps"]["total"] == steps_total_of(client, 6)


def test_a_chunked_json_body_is_read(client: falcon.testing.TestClient) -> None:
    status, answer = post_chunked(
        client, "/api/txt2img", b'{"steps": 5, "prompt": "cat"}', "application/json"
    )

    assert status.startswith("200"), answer
    assert answer["steps"]["total"] == steps_total_of(client, 5)


def test_a_chunked_multipart_body_is_read(client: falcon.testing.TestClient) -> None:
    body, headers = multipart(
        {
            "json": json.dumps({"params": {"strength": 1.0, "steps": 4}}),
            "source": ("s.png", png(), "image/png"),
        }
    )
    status, answer = post_chunked(client, "/api/img2img", body, headers["Content-Type"])

    assert status.startswith("200"), answer


def test_a_chunked_body_over_the_cap_is_a_413(client: falcon.testing.TestClient) -> None:
    status, answer = post_chunked(client, "/api/txt2img", b" " * (3 * 1024 * 1024), "application/json")

    assert status.startswith("413"), answer


def test_parameters_a_route_does_not_use_are_still_checked(client: falcon.testing.TestClient) -> None:
    assert_refused(client.simulate_post("/api/txt2img", params={"strength": "1e9"}), 400, "strength")
    form = {
        "json": json.dumps({"highresSteps": "NaN"}),
        "mask": ("m.png", png(), "image/png"),
        "source:0": ("a.png", png(), "image/png"),
        "source:1": ("b.png", png(), "image/png"),
    }
    assert_refused(post_multipart(client, "/api/blend", form), 400, "highresSteps")


def test_an_idempotency_key_reused_with_other_query_parameters_is_a_409(
    client: falcon.testing.TestClient,
) -> None:
    form = {"source": ("s.png", png(), "image/png")}
    headers = {"Idempotency-Key": "multipart-query"}
    first = post_multipart(client, "/api/img2img", form, params={"prompt": "a cat"}, headers=headers)
    again = post_multipart(client, "/api/img2img", form, params={"prompt": "a cat"}, headers=headers)
    other = post_multipart(client, "/api/img2img", form, params={"prompt": "a dog"}, headers=headers)

    assert first.status_code == again.status_code == 200
    assert first.json["name"] == again.json["name"]
    assert other.status_code == 409


# --- models the workers cannot run in that stage ---------------------------------------------------


def test_an_sdxl_pipeline_with_an_sd_model_is_a_400(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2img", params={"pipeline": "txt2img-sdxl"})

    assert_refused(result, 400, "pipeline", "needs an SDXL model", SDXL_MODEL)


@pytest.mark.parametrize(
    ("route", "pipeline"), [("img2img", "img2img"), ("img2img", "img2img-sdxl"), ("inpaint", "inpaint")]
)
def test_an_sdxl_model_in_img2img_or_inpaint_is_accepted(
    client: falcon.testing.TestClient, route: str, pipeline: str
) -> None:
    form = {
        "json": json.dumps({"params": {"model": SDXL_MODEL, "pipeline": pipeline}}),
        "source": ("s.png", png(), "image/png"),
        "mask": ("m.png", png(), "image/png"),
    }

    result = post_multipart(client, f"/api/{route}", form)

    assert result.status_code == 200, result.text


def test_img2img_sdxl_with_an_sd_model_is_a_400(client: falcon.testing.TestClient) -> None:
    form = {
        "json": json.dumps({"params": {"pipeline": "img2img-sdxl"}}),
        "source": ("s.png", png(), "image/png"),
    }

    assert_refused(
        post_multipart(client, "/api/img2img", form), 400, "pipeline", "needs an SDXL model", SDXL_MODEL
    )


def test_an_sdxl_model_with_highres_is_accepted(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2img", params={"model": SDXL_MODEL, "highres": "true"})

    assert result.status_code == 200, result.text


def test_an_sdxl_model_in_a_chains_img2img_stage_is_accepted(client: falcon.testing.TestClient) -> None:
    chain = {
        "stages": [
            {"name": "gen", "type": "source-txt2img", "params": {"model": SDXL_MODEL}},
            {"name": "redo", "type": "blend-img2img", "params": {"model": SDXL_MODEL, "strength": 0.5}},
        ]
    }

    result = client.simulate_post("/api/job", json=chain)

    assert result.status_code == 200, result.text


def test_an_sdxl_pipeline_on_an_sd_model_in_a_chain_names_the_stage(
    client: falcon.testing.TestClient,
) -> None:
    chain = {
        "stages": [
            {"name": "gen", "type": "source-txt2img", "params": {}},
            {
                "name": "redo",
                "type": "blend-img2img",
                "params": {"pipeline": "img2img-sdxl", "strength": 0.5},
            },
        ]
    }

    assert_refused(client.simulate_post("/api/job", json=chain), 400, "stages[1].params.pipeline", SDXL_MODEL)


def test_an_sdxl_model_in_txt2img_is_accepted(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/txt2img", params={"model": SDXL_MODEL, "pipeline": "txt2img-sdxl"})

    assert result.status_code == 200, result.text


# --- dependencies that are down -------------------------------------------------------------------


@pytest.fixture
def no_database() -> JobStore:
    """A job store whose Postgres refuses connections (nothing listens on port 1)."""
    engine: sqlalchemy.Engine = make_engine("postgresql://nobody:secret@127.0.0.1:1/onnx_web")
    return JobStore(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)


@pytest.fixture
def no_storage() -> S3ObjectStore:
    """An object store whose S3 server refuses connections."""
    return S3ObjectStore(
        "127.0.0.1:1", "key", "secret", "onnx-web", retry=RetryPolicy(max_attempts=2, backoff_s=0.01)
    )


def test_a_database_outage_is_a_503_with_retry_after(
    no_database: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    client = api_client(no_database, object_store, models, tmp_path)

    for result in (
        client.simulate_post("/api/txt2img", params={"prompt": "cat"}),
        client.simulate_get("/api/job/status", params={"jobs": "txt2img_1_abc_1"}),
    ):
        assert_refused(result, 503, "database")
        assert int(result.headers["retry-after"]) > 0
    assert client.simulate_get("/healthz").status_code == 200


def test_a_storage_outage_is_a_503_with_retry_after(
    job_store: JobStore, no_storage: S3ObjectStore, models: Path, tmp_path: Path
) -> None:
    client = api_client(job_store, no_storage, models, tmp_path)
    form = {"json": json.dumps({"params": {"prompt": "cat"}}), "source": ("s.png", png(), "image/png")}

    result = post_multipart(client, "/api/img2img", form)

    error = assert_refused(result, 503, "object store")
    assert int(result.headers["retry-after"]) > 0
    # The key layout, the endpoint and the client library's words stay in the log.
    assert "127.0.0.1" not in error and "inputs/" not in error and "Error" not in error, error


def test_a_store_that_refuses_connections_trips_no_breaker(
    job_store: JobStore, models: Path, tmp_path: Path
) -> None:
    """Refused at once (S3 restarting), a call costs nothing to try: failing the next ones fast
    would only outlast S3's return (an api started beside a starting S3 answered 503s for seconds)."""
    breaker = Breaker(cooldown_s=30.0, probe_s=5.0)
    store = S3ObjectStore(
        "127.0.0.1:1",
        "key",
        "secret",
        "onnx-web",
        retry=RetryPolicy(max_attempts=2, backoff_s=0.01),
        breaker=breaker,
    )
    client = api_client(job_store, store, models, tmp_path)
    form = {"json": json.dumps({"params": {"prompt": "cat"}}), "source": ("s.png", png(), "image/png")}

    assert_refused(post_multipart(client, "/api/img2img", form), 503, "object store")

    assert not breaker.open


def test_a_store_that_stops_answering_costs_one_wait_then_fails_at_once(
    job_store: JobStore, models: Path, tmp_path: Path
) -> None:
    """S3 accepting connections and never answering (frozen, a black hole): the first request pays
    its timeouts, the next ones are a 503 at once instead of each holding an api thread as long."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    try:
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        breaker = Breaker(cooldown_s=30.0, probe_s=5.0)
        retry = RetryPolicy(max_attempts=2, backoff_s=0.01)
        store = S3ObjectStore(
            endpoint,
            "key",
            "secret",
            "onnx-web",
            retry=retry,
            connect_timeout_s=0.3,
            read_timeout_s=0.3,
            breaker=breaker,
        )
        client = api_client(job_store, store, models, tmp_path)
        form = {"json": json.dumps({"params": {"prompt": "cat"}}), "source": ("s.png", png(), "image/png")}

        started = time.monotonic()
        assert_refused(post_multipart(client, "/api/img2img", form), 503, "object store")
        first = time.monotonic() - started
        started = time.monotonic()
        assert_refused(post_multipart(client, "/api/img2img", form), 503, "object store")
        second = time.monotonic() - started
        assert first >= 0.6 > second  # two read timeouts, then none
        assert breaker.open
    finally:
        silent.close()


def test_readyz_names_each_dependency(
    job_store: JobStore,
    object_store: ObjectStore,
    no_database: JobStore,
    no_storage: S3ObjectStore,
    models: Path,
    tmp_path: Path,
) -> None:
    ready = api_client(job_store, object_store, models, tmp_path).simulate_get("/readyz")
    assert ready.status_code == 200
    assert {name: check["status"] for name, check in ready.json["checks"].items()} == {
        "database": "ok",
        "storage": "ok",
    }

    for jobs, store, down in ((no_database, object_store, "database"), (job_store, no_storage, "storage")):
        result = api_client(jobs, store, models, tmp_path).simulate_get("/readyz")
        assert result.status_code == 503
        assert result.json["checks"][down]["status"] == "unavailable"
        assert api_client(jobs, store, models, tmp_path).simulate_get("/healthz").status_code == 200


def test_a_chains_uploads_for_no_stage_are_never_decoded(client: falcon.testing.TestClient) -> None:
    """Up to 63 parts of large, highly compressible images: decoding each would cost the api
    seconds and a gigabyte; only the parts a stage of the chain names are read past their header."""
    truncated = png((512, 512))[:200]
    chain = {"stages": [{"name": "start", "type": "source-txt2img", "params": {"steps": 1}}]}
    form = {
        "chain": json.dumps(chain),
        **{f"source:x{index}": (f"{index}.png", truncated, "image/png") for index in range(8)},
    }

    assert post_multipart(client, "/api/chain", form).status_code == 200


def test_a_chains_unknown_platform_is_a_400(client: falcon.testing.TestClient) -> None:
    chain = {"platform": "bogus", "stages": [{"name": "s", "type": "source-txt2img", "params": {"steps": 1}}]}

    assert_refused(client.simulate_post("/api/chain", json=chain), 400, "platform", "bogus")


def test_a_cmyk_jpeg_upload_is_stored_as_rgb(client: falcon.testing.TestClient) -> None:
    """Print workflows export CMYK JPEGs; PNG, which uploads are stored as, cannot hold CMYK."""
    buffer = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(buffer, format="JPEG")
    form = {
        "json": json.dumps({"params": {"prompt": "cat", "steps": 1}}),
        "source": ("s.jpg", buffer.getvalue(), "image/jpeg"),
    }

    assert post_multipart(client, "/api/img2img", form).status_code == 200


# --- audit: values, headers and bodies that answered 500 or were read wrong -----------------------


def raw_multipart(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body of ``(header lines, content)`` parts taken byte for byte, so headers can
    hold what no client library would write."""
    boundary = b"audit-boundary"
    body = b"".join(b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary, headers, content) for headers, content in parts)
    return body + b"--%s--\r\n" % boundary, {
        "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"
    }


def job_params(job_store: JobStore, result: falcon.testing.Result) -> dict[str, Any]:
    """The first stage's parameters of the job a submission answered, as a worker claims them."""
    assert result.status_code == 200, result.text
    claimed = job_store.claim("w-1", platform="cpu", held_models=())
    assert claimed is not None and claimed.name == result.json["name"]
    return dict(claimed.chain["stages"][0]["params"])


@pytest.mark.parametrize(
    "text",
    ["steps: " + "9" * 5000, "foo: 2024-13-45", "foo: 2001-12-14t21:59:43.10-99:00", "foo: !!int 1.5"],
)
@pytest.mark.parametrize(("path", "field"), [("/api/txt2img", "json"), ("/api/chain", "chain")])
def test_a_yaml_value_python_cannot_build_is_a_400_naming_the_field(
    client: falcon.testing.TestClient, text: str, path: str, field: str
) -> None:
    error = assert_refused(post_multipart(client, path, {field: text}), 400, field)

    assert "sys." not in error


def test_a_yaml_date_is_a_400_unless_quoted(client: falcon.testing.TestClient, job_store: JobStore) -> None:
    bare = post_multipart(client, "/api/txt2img", {"json": "prompt: 2024-01-02\nsteps: 3"})
    quoted = post_multipart(client, "/api/txt2img", {"json": "prompt: '2024-01-02'\nsteps: 3"})

    assert_refused(bare, 400, "json.prompt", "YAML date", "quote")
    assert job_params(job_store, quoted)["prompt"] == "2024-01-02"


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: form-data; name="\xff\xfe"',
        b'Content-Disposition: form-data; name="source"; filename="\xff.png"',
        b'Content-Disposition: form-data; name="other"\r\nContent-Type: image/\xff',
    ],
)
@pytest.mark.parametrize("path", ["/api/txt2img", "/api/chain"])
def test_a_part_header_that_is_not_utf8_is_a_400(
    client: falcon.testing.TestClient, header: bytes, path: str
) -> None:
    body, headers = raw_multipart((header, png()))

    assert_refused(client.simulate_post(path, body=body, headers=headers), 400, "UTF-8")


@pytest.mark.parametrize("name", ["source:a/b", "source:a\\b", "source:a\x85", "..", "source:" + "x" * 1100])
@pytest.mark.parametrize("path", ["/api/txt2img", "/api/chain"])
def test_an_upload_name_no_object_key_can_hold_is_a_400(
    client: falcon.testing.TestClient, name: str, path: str
) -> None:
    chain = json.dumps({"stages": [{"name": "gen", "type": "source-txt2img", "params": {}}]})
    escaped = name.replace("\\", "\\\\").encode()
    body, headers = raw_multipart(
        (b'Content-Disposition: form-data; name="chain"', chain.encode()),
        (b'Content-Disposition: form-data; name="%s"; filename="s.png"' % escaped, png()),
    )

    error = assert_refused(
        client.simulate_post(path, body=body, headers=headers), 400, "upload", "bytes of UTF-8"
    )

    assert len(error) < 300


def test_an_upload_named_for_a_stage_is_accepted(client: falcon.testing.TestClient) -> None:
    chain = {"stages": [{"name": "redo", "type": "blend-img2img", "params": {"strength": 0.5}}]}
    form = {"chain": json.dumps(chain), "source:redo": ("s.png", png(), "image/png")}

    result = post_multipart(client, "/api/chain", form)

    assert result.status_code == 200, result.text


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/api/txt2img", b'{"prompt": "a cat in a hat", "steps": 3}', "application/json"),
        (
            "/api/job",
            b'{"stages": [{"name": "a", "type": "source-noise", "params": {}}]}',
            "application/json",
        ),
        ("/api/txt2img", b"prompt=a+cat&steps=3", "application/x-www-form-urlencoded"),
    ],
)
def test_a_body_shorter_than_its_content_length_is_a_400(
    client: falcon.testing.TestClient, path: str, body: bytes, content_type: str
) -> None:
    """What a client that half-closes its socket halfway through its body sends."""
    headers = {"Content-Type": content_type, "Content-Length": str(len(body) + 59)}

    assert_refused(client.simulate_post(path, body=body, headers=headers), 400, "body", "incomplete")


def test_a_multipart_body_shorter_than_its_content_length_is_a_400(client: falcon.testing.TestClient) -> None:
    body, headers = multipart({"json": json.dumps({"steps": 3}), "source": ("s.png", png(), "image/png")})
    cut = body[: len(body) // 2]

    result = client.simulate_post(
        "/api/txt2img", body=cut, headers={**headers, "Content-Length": str(len(body))}
    )

    assert result.status_code == 400, result.text


@pytest.mark.parametrize("where", ["query", "form"])
def test_a_percent_escape_that_is_not_utf8_is_a_400_naming_the_parameter(
    client: falcon.testing.TestClient, where: str
) -> None:
    text = "prompt=%ff%fe&steps=1"
    if where == "query":
        result = client.simulate_post("/api/txt2img", query_string=text)
    else:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        result = client.simulate_post("/api/txt2img", body=text.encode(), headers=form)

    assert_refused(result, 400, "prompt", "UTF-8")


def test_a_replacement_character_sent_as_utf8_is_kept(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    result = client.simulate_post("/api/txt2img", query_string="prompt=a%EF%BF%BDb&steps=1")

    assert job_params(job_store, result)["prompt"] == "a\ufffdb"


@pytest.mark.parametrize(
    ("stages", "where", "rule"),
    [
        ([{"name": "redo", "type": "blend-img2img", "params": {"steps": 1}}], "stages[0]", "'source:redo'"),
        (
            [{"name": "grow", "type": "upscale-simple", "params": {}}],
            "stages[0]",
            "no earlier stage makes one",
        ),
        (
            [
                {"name": "words", "type": "text-prompt", "params": {"prompt_filter": "AUTOMATIC/demo-gpt2"}},
                {"name": "save", "type": "persist-disk", "params": {}},
            ],
            "stages[1]",
            "persist-disk has no image",
        ),
    ],
)
def test_a_chain_that_reaches_a_stage_without_an_image_is_a_400(
    client: falcon.testing.TestClient, stages: list[dict[str, Any]], where: str, rule: str
) -> None:
    """Such a chain used to fail in the worker ("this stage needs an input image") or end
    successful with no output at all."""
    assert_refused(client.simulate_post("/api/chain", json={"stages": stages}), 400, where, rule)


def test_an_upload_longer_than_8192_pixels_a_side_is_a_400(client: falcon.testing.TestClient) -> None:
    """50000x8 is within the pixel cap but no request may ask for such a width."""
    form = {
        "json": json.dumps({"params": {"prompt": "cat"}}),
        "source": ("s.png", png((50000, 8)), "image/png"),
    }

    assert_refused(post_multipart(client, "/api/img2img", form), 400, "source", "8192 pixels a side")


@pytest.mark.parametrize(
    ("route", "field"), [("img2img", "steps"), ("txt2img", "prompt"), ("txt2txt", "maxTokens")]
)
def test_a_parameter_sent_as_a_plain_multipart_field_is_refused_not_left_out(
    client: falcon.testing.TestClient, job_store: JobStore, route: str, field: str
) -> None:
    # Such a field is not read (contract §3.1): the job would run on its defaults without a word.
    fields = {field: "9", "source": ("s.png", png(), "image/png")}

    result = post_multipart(client, f"/api/{route}", fields)

    assert_refused(result, 400, field, "multipart form field, which is not read")
    assert job_store.claim("w-1", platform="cpu", held_models=()) is None


def test_parameters_in_the_json_field_beside_other_plain_fields_are_read(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    fields = {"json": json.dumps({"params": {"steps": 3}}), "note": "not a parameter"}

    result = post_multipart(client, "/api/txt2img", fields)

    assert job_params(job_store, result)["steps"] == 3


def test_a_chain_sent_as_a_form_says_what_it_got_and_what_to_send(client: falcon.testing.TestClient) -> None:
    # curl --data @chain.json without a Content-Type header sends a form.
    body = json.dumps({"stages": [{"name": "a", "type": "source-txt2img", "params": {}}]}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    result = client.simulate_post("/api/chain", body=body, headers=form)

    assert_refused(
        result, 400, "chain", "must have a body (JSON", "got a form (application/x-www-form-urlencoded)"
    )

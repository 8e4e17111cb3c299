"""Keys mode (``ONNX_WEB_AUTH=keys``): every job has an owner, and owners never see each other.

Real Postgres and S3: two keys, each seeing only its own jobs on every route; missing, unknown and
revoked keys; admin routes; the three quotas answered 429 with ``Retry-After``; the ``keys`` CLI.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy
import urllib3
from PIL import Image

from service.jobs.keys import ApiKey, KeyStore
from service.jobs.store import JobStore
from service.output_names import image_name
from service.storage import ObjectStore
from tests.integration.api import ADMIN_TOKEN, api_client, error_of, job_name, make_models, succeed

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(engine: sqlalchemy.Engine) -> KeyStore:
    return KeyStore(engine)


@pytest.fixture
def client(
    job_store: JobStore, object_store: ObjectStore, keys: KeyStore, tmp_path: Path
) -> falcon.testing.TestClient:
    models = make_models(tmp_path / "models")
    return api_client(job_store, object_store, models, tmp_path, keys=keys, auth="keys")


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def make_key(keys: KeyStore, owner: str, **limits: Any) -> tuple[ApiKey, dict[str, str]]:
    key, text = keys.create(owner, **limits)
    return key, bearer(text)


def submit(
    client: falcon.testing.TestClient, headers: dict[str, str], **params: str
) -> falcon.testing.Result:
    return client.simulate_post("/api/txt2img", params={"prompt": "cat", **params}, headers=headers)


def test_requests_without_a_valid_key_are_refused_and_create_nothing(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore
) -> None:
    revoked, revoked_headers = make_key(keys, "mallory")
    keys.revoke(revoked.id)

    for headers, status, words in (
        ({}, 401, "Authorization: Bearer"),
        (bearer("owk_nope_nope"), 401, "unknown API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "Bearer"),
        (revoked_headers, 403, "revoked"),
    ):
        result = submit(client, headers)
        assert result.status_code == status, result.text
        assert words in error_of(result)
    assert job_store.queue_depth() == 0


def test_settings_probes_and_the_gui_need_no_key(client: falcon.testing.TestClient) -> None:
    for path in ("/api/settings/params", "/api/settings/models", "/healthz", "/readyz", "/", "/api"):
        assert client.simulate_get(path).status_code == 200, path
    assert client.simulate_get("/metrics").status_code == 401


def test_each_owner_sees_only_its_own_jobs_on_every_route(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore, object_store: ObjectStore
) -> None:
    _, alice = make_key(keys, "alice")
    _, bob = make_key(keys, "bob")
    done = job_name()
    files = succeed(job_store, object_store, done, owner="alice")
    pending = submit(client, alice).json["name"]
    image = image_name(done, 0, "png")

    def status(name: str, headers: dict[str, str]) -> str:
        record = client.simulate_get("/api/job/status", params={"jobs": name}, headers=headers).json[0]
        return str(record["status"])

    assert [status(pending, bob), status(done, bob)] == ["unknown", "unknown"]
    assert [status(pending, alice), status(done, alice)] == ["pending", "success"]
    for file in files:
        assert client.simulate_get(f"/output/{file}", headers=bob).status_code == 404
        assert client.simulate_head(f"/output/{file}", headers=bob).status_code == 404
        assert client.simulate_get(f"/output/{file}", headers=alice).content == files[file]
    assert client.simulate_get("/api/ready", params={"output": done}, headers=bob).json["failed"] is True

    cancelled = client.simulate_put("/api/job/cancel", params={"jobs": pending}, headers=bob)
    assert cancelled.json == [{"name": pending, "status": "unknown"}]
    assert client.simulate_put("/api/cancel", params={"output": pending}, headers=bob).status_code == 200
    assert status(pending, alice) == "pending"
    assert image in files


def test_idempotency_keys_belong_to_their_owner(client: falcon.testing.TestClient, keys: KeyStore) -> None:
    _, alice = make_key(keys, "alice")
    _, bob = make_key(keys, "bob")
    key = {"Idempotency-Key": "same-words"}

    first = submit(client, {**alice, **key})
    again = submit(client, {**alice, **key})
    other = submit(client, {**bob, **key})

    assert first.json["name"] == again.json["name"]
    assert other.status_code == 200 and other.json["name"] != first.json["name"]


def test_admin_routes_need_an_admin_key_or_the_token(
    client: falcon.testing.TestClient, keys: KeyStore
) -> None:
    _, user = make_key(keys, "alice")
    admin_key, admin = make_key(keys, "ops", admin=True)

    assert client.simulate_get("/api/worker/status", headers=user).status_code == 403
    assert client.simulate_get("/api/worker/status", headers=admin).status_code == 200
    assert client.simulate_get("/api/worker/status", params={"token": ADMIN_TOKEN}).status_code == 200
    assert admin_key.admin


def test_an_admin_key_sees_and_cancels_every_owners_jobs_but_lists_and_owns_its_own(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore, object_store: ObjectStore
) -> None:
    _, alice = make_key(keys, "alice")
    _, ops = make_key(keys, "ops", admin=True)
    done = job_name()
    files = succeed(job_store, object_store, done, owner="alice")
    # What PUT /api/extras with the admin token makes: conversion jobs owned by "admin".
    converted = job_name()
    succeed(job_store, object_store, converted, owner="admin")
    theirs = submit(client, alice).json["name"]
    mine = submit(client, ops).json["name"]
    assert submit(client, {}, token=ADMIN_TOKEN).status_code == 401  # the token is no key here

    records = client.simulate_get(
        "/api/job/status", params={"jobs": f"{theirs},{done},{converted}"}, headers=ops
    ).json
    assert [record["status"] for record in records] == ["pending", "success", "success"]
    for file in files:
        assert client.simulate_get(f"/output/{file}", headers=ops).content == files[file]
    cancelled = client.simulate_put("/api/job/cancel", params={"jobs": theirs}, headers=ops)
    assert cancelled.json == [{"name": theirs, "status": "cancelled"}]

    listed = client.simulate_get("/api/jobs", headers=ops).json["jobs"]
    assert [record["name"] for record in listed] == [mine]
    # A user still sees nothing of the admin's.
    status = client.simulate_get("/api/job/status", params={"jobs": mine}, headers=alice).json[0]
    assert status["status"] == "unknown"


def test_too_many_running_jobs_is_a_429_naming_the_limit(
    client: falcon.testing.TestClient, keys: KeyStore
) -> None:
    _, alice = make_key(keys, "alice", max_running=2)

    results = [submit(client, alice) for _ in range(3)]

    assert [result.status_code for result in results] == [200, 200, 429]
    assert "2 jobs pending or running" in error_of(results[2])
    assert int(results[2].headers["retry-after"]) > 0


def test_too_many_requests_a_minute_is_a_429(client: falcon.testing.TestClient, keys: KeyStore) -> None:
    _, alice = make_key(keys, "alice", rate_per_min=3)
    _, bob = make_key(keys, "bob", rate_per_min=3)

    codes = [
        client.simulate_get("/api/job/status", params={"jobs": "x"}, headers=alice).status_code
        for _ in range(4)
    ]

    assert codes == [200, 200, 200, 429]
    assert client.simulate_get("/api/job/status", params={"jobs": "x"}, headers=bob).status_code == 200


def test_the_daily_pixel_steps_budget_is_a_429_and_counts_only_accepted_jobs(
    client: falcon.testing.TestClient, keys: KeyStore
) -> None:
    key, alice = make_key(keys, "alice", pixel_steps_per_day=512 * 512 * 30)

    small = submit(client, alice, width="512", height="512", steps="20")
    large = submit(client, alice, width="512", height="512", steps="20")

    assert small.status_code == 200 and large.status_code == 429
    assert "pixel-steps a day" in error_of(large)
    assert 0 < keys.list()[0].pixel_steps_today <= 512 * 512 * 30
    assert keys.list()[0].key.id == key.id


def test_cors_lists_only_the_configured_origins_in_keys_mode(
    job_store: JobStore, object_store: ObjectStore, keys: KeyStore, tmp_path: Path
) -> None:
    models = make_models(tmp_path / "models")
    client = api_client(
        job_store,
        object_store,
        models,
        tmp_path,
        keys=keys,
        auth="keys",
        cors_origins=("*", "https://app.example"),
    )
    allowed = client.simulate_get("/api/settings/params", headers={"Origin": "https://app.example"})
    other = client.simulate_get("/api/settings/params", headers={"Origin": "https://evil.example"})

    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
    assert allowed.headers["x-content-type-options"] == "nosniff"
    # A GUI there reads how long a 429 asks it to wait.
    exposed = allowed.headers.get("access-control-expose-headers", "").lower()
    assert "retry-after" in exposed and "x-request-id" in exposed


def test_the_keys_command_creates_lists_and_revokes(database_url: str, keys: KeyStore) -> None:
    def onnx_web(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "keys", *args],
            env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )

    created = onnx_web("create", "carol", "--max-running", "2", "--rate", "60")
    assert created.returncode == 0, created.stderr
    text = created.stdout.split()[-1]
    found = keys.find(text)
    assert found is not None and (found.owner, found.max_running, found.rate_per_min) == ("carol", 2, 60)

    listed = onnx_web("list")
    assert found.id in listed.stdout and "carol" in listed.stdout and text not in listed.stdout

    assert onnx_web("revoke", found.id).returncode == 0
    assert onnx_web("revoke", found.id).returncode == 1
    assert keys.find(text) is not None and keys.find(text).revoked  # type: ignore[union-attr]


def test_each_owner_lists_its_own_jobs_newest_first_a_page_at_a_time(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore
) -> None:
    _, alice = make_key(keys, "alice")
    _, bob = make_key(keys, "bob")
    mine = [submit(client, alice, seed=str(seed)).json["name"] for seed in range(3)]
    theirs = submit(client, bob).json["name"]

    first = client.simulate_get("/api/jobs", params={"limit": "2"}, headers=alice).json
    second = client.simulate_get(
        "/api/jobs", params={"limit": "2", "cursor": first["next"]}, headers=alice
    ).json

    assert [job["name"] for job in first["jobs"] + second["jobs"]] == mine[::-1]
    assert second["next"] is None
    assert [job["name"] for job in client.simulate_get("/api/jobs", headers=bob).json["jobs"]] == [theirs]
    assert first["jobs"][0]["status"] == "pending" and "queue" in first["jobs"][0]
    running = client.simulate_get("/api/jobs", params={"status": "running"}, headers=alice).json
    assert running == {"jobs": [], "next": None}


def cursor_of(text: str) -> str:
    """``text`` encoded as the api encodes its cursors (URL-safe base64, without padding)."""
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogateescape")).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),
        ({"limit": "\u0661"}, "limit"),
        ({"limit": "1" * 5000}, "limit"),
        ({"cursor": "x"}, "cursor"),
        ({"cursor": "\u00e9" * 8}, "cursor"),
        ({"cursor": "A" * 5000}, "cursor"),
        *[
            ({"cursor": cursor_of(document)}, "cursor")
            for document in (
                json.dumps(["2020-01-01", 1]),
                json.dumps(["2020-01-01", {}]),
                json.dumps(["2020-01-01", []]),
                json.dumps([1, "00000000-0000-0000-0000-000000000000"]),
                json.dumps(["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),
                json.dumps({"2020-01-01T00:00:00+00:00": 1, "00000000-0000-0000-0000-000000000000": 2}),
                json.dumps(["2020-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000", 3]),
                "[" * 2500,
                "\xff\xfe",
            )
        ],
    ],
)
def test_bad_listing_parameters_are_a_400(
    client: falcon.testing.TestClient, keys: KeyStore, params: dict[str, str], field: str
) -> None:
    _, alice = make_key(keys, "alice")
    result = client.simulate_get("/api/jobs", params=params, headers=alice)

    assert result.status_code == 400 and error_of(result).startswith(field)


def test_there_is_no_listing_in_anonymous_mode(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)

    assert client.simulate_get("/api/jobs").status_code == 404


def test_a_failed_job_says_why_in_words(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore
) -> None:
    _, alice = make_key(keys, "alice")
    name = submit(client, alice).json["name"]
    claimed = job_store.claim("w", platform="cpu", held_models=())
    assert claimed is not None and claimed.name == name
    job_store.finish_failed(
        claimed.id, "w", claimed.attempt, reason="oom", message="Traceback …", retryable=False
    )

    record = client.simulate_get("/api/job/status", params={"jobs": name}, headers=alice).json[0]

    assert record["reason"] == "oom" and "more memory" in record["error"]
    assert "Traceback" not in json.dumps(record)


def test_concurrent_submissions_cannot_pass_the_running_jobs_limit(
    client: falcon.testing.TestClient, keys: KeyStore, job_store: JobStore
) -> None:
    """The limit is counted and the job inserted under one lock of the owner's: twelve at once
    used to get up to five jobs past a limit of two."""
    _, alice = make_key(keys, "alice", max_running=2)

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = sorted(pool.map(lambda _: submit(client, alice).status_code, range(12)))

    assert codes == [200, 200] + [429] * 10
    assert job_store.queue_depth() == 2


def test_a_retry_with_the_same_idempotency_key_is_answered_its_job_and_not_charged(
    client: falcon.testing.TestClient, keys: KeyStore, object_store: ObjectStore
) -> None:
    _, alice = make_key(keys, "alice", max_running=2, pixel_steps_per_day=512 * 512 * 30)
    first_key, second_key = {"Idempotency-Key": "first"}, {"Idempotency-Key": "second"}
    form_body, form_type = multipart_image()

    first = client.simulate_post(
        "/api/img2img", body=form_body, headers={**alice, **first_key, "Content-Type": form_type}
    )
    second = submit(client, {**alice, **second_key}, width="256", height="256", steps="1")
    retries = [
        client.simulate_post(
            "/api/img2img", body=form_body, headers={**alice, **first_key, "Content-Type": form_type}
        )
        for _ in range(3)
    ]

    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    # At the running-jobs limit and past the day's budget if charged again, yet answered its job.
    assert [retry.status_code for retry in retries] == [200, 200, 200], retries[0].text
    assert {retry.json["name"] for retry in retries} == {first.json["name"]}
    charged = keys.list()[0].pixel_steps_today
    assert 0 < charged <= 512 * 512 * 30
    # The retries stored no inputs of their own.
    assert len(object_store.list_keys("inputs/")) == 1


def multipart_image() -> tuple[bytes, str]:
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), (90, 140, 30)).save(buffer, format="PNG")
    body, content_type = urllib3.encode_multipart_formdata(
        {
            "json": json.dumps({"params": {"prompt": "cat", "steps": 20, "strength": 1.0}}),
            "source": ("s.png", buffer.getvalue(), "image/png"),
        }
    )
    return body, content_type

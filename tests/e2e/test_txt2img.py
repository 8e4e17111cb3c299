"""txt2img through the real stack: submit, watch progress, fetch the PNG, reproduce, cancel."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def submit_query(client: httpx.Client, **params: object) -> dict:
    """The documented legacy layout: every parameter in the query string."""
    response = client.post("/api/txt2img", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def fetch_image(client: httpx.Client, name: str) -> Image.Image:
    response = client.get(f"/output/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_query_string_txt2img_succeeds_with_progress_size_and_metadata(client: httpx.Client) -> None:
    job = submit_query(
        client,
        prompt="an astronaut eating a hamburger",
        steps=40,
        seed=42,
        width=192,
        height=128,
        cfg=6.0,
        scheduler="ddim",
        negativePrompt="blurry",
    )
    assert job["status"] == "pending"
    assert set(job) >= {"name", "queue", "stages", "steps", "tiles"}
    assert job["name"].startswith("txt2img_42_")

    seen = wait_for(client, job["name"], until=finished)
    record = seen[-1]
    assert record["status"] == "success", record
    running = [r for r in seen if r["status"] == "running"]
    assert any(0 < r["steps"]["current"] < r["steps"]["total"] for r in running), (
        "no partial progress was reported"
    )
    assert record["steps"] == {"current": 41, "total": 41}  # 40 steps, then the save
    assert record["stages"] == {"current": 2, "total": 2}  # txt2img, save

    output = record["outputs"][0]
    image = fetch_image(client, output)
    assert image.size == (192, 128)
    parameters = image.info["parameters"]
    assert parameters.startswith("an astronaut eating a hamburger\nNegative prompt: blurry\n")
    assert "Steps: 40, Sampler: ddim, CFG scale: 6.0, Seed: 42, Size: 192x128" in parameters
    note = json.loads(image.info["maker note"])
    assert note["params"]["seed"] == 42 and note["outputs"] == [output]
    assert record["metadata"][0]["size"] == {"width": 192, "height": 128}

    sidecar = client.get(f"/output/{output}.json")
    assert sidecar.status_code == 200 and sidecar.json() == note
    thumb = Image.open(io.BytesIO(client.get(f"/output/{record['thumbnails'][0]}").content))
    assert thumb.size == (192, 128)  # thumbnails shrink, never enlarge


def test_same_seed_gives_identical_pixels(client: httpx.Client) -> None:
    names = [
        submit_query(client, prompt="a red fox", steps=4, seed=1234, width=128, height=128)["name"]
        for _ in range(2)
    ]
    other = submit_query(client, prompt="a red fox", steps=4, seed=4321, width=128, height=128)["name"]
    images = []
    for name in [*names, other]:
        record = wait_for(client, name, until=finished)[-1]
        assert record["status"] == "success", record
        images.append(np.asarray(fetch_image(client, record["outputs"][0])))
    assert names[0] != names[1], "two jobs must never share a name"
    assert np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_cancelling_a_long_job_ends_it_cancelled(client: httpx.Client) -> None:
    job = submit_query(client, prompt="a very long job", steps=300, width=512, height=512)
    wait_for(client, job["name"], until=lambda r: r["status"] == "running" and r["steps"]["current"] > 0)
    response = client.put("/api/job/cancel", params={"jobs": job["name"]})
    assert response.status_code == 200
    assert response.json() == [{"name": job["name"], "status": "running", "cancelRequested": True}]
    record = wait_for(client, job["name"], until=finished, timeout_s=60)[-1]
    assert record["status"] == "cancelled"
    assert record["steps"]["current"] < 300
    assert "outputs" not in record


def test_json_and_multipart_layouts_are_accepted(client: httpx.Client) -> None:
    body = {"params": {"prompt": "a lighthouse", "steps": 2, "width": 128, "height": 128, "seed": 7}}
    as_json = client.post("/api/txt2img", json=body)
    as_form = client.post("/api/txt2img", files={"json": (None, json.dumps(body))})
    for response in (as_json, as_form):
        assert response.status_code == 200, response.text
        record = wait_for(client, response.json()["name"], until=finished)[-1]
        assert record["status"] == "success", record
        assert record["metadata"][0]["params"]["prompt"] == "a lighthouse"

"""Jobs are admitted by memory: refused when no live worker holds them, claimed only where they fit."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from service.jobs.store import JobStore
from service.storage import ObjectStore
from tests.fixtures.postgres import new_job
from tests.integration.api import api_client, error_of, make_models

pytestmark = pytest.mark.integration

GIB = 1024**3


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return make_models(tmp_path / "models")


def announce(job_store: JobStore, worker_id: str, platform: str, memory_bytes: int | None) -> None:
    job_store.announce_worker(
        worker_id,
        platform=platform,
        providers=[],
        models=[],
        version="test",
        jobs_done=0,
        memory_bytes=memory_bytes,
    )


def client_for(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path, **config: object
) -> falcon.testing.TestClient:
    return api_client(job_store, object_store, models, tmp_path, **config)


def test_a_job_no_live_worker_can_hold_is_refused_naming_the_limit(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    announce(job_store, "small-cpu", "cpu", 8 * GIB)
    client = client_for(job_store, object_store, models, tmp_path)

    refused = client.simulate_post("/api/txt2img", params={"width": "1024", "height": "768", "prompt": "cat"})
    accepted = client.simulate_post("/api/txt2img", params={"width": "512", "height": "512", "prompt": "cat"})

    assert refused.status_code == 400
    error = error_of(refused)
    assert "width/height/batch" in error and "8.0 GiB" in error and "cpu worker" in error, error
    assert accepted.status_code == 200, accepted.text


def test_a_larger_worker_of_another_platform_admits_the_job(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    announce(job_store, "small-cpu", "cpu", 8 * GIB)
    announce(job_store, "gpu", "cuda", 24 * GIB)
    client = client_for(job_store, object_store, models, tmp_path)

    anywhere = client.simulate_post("/api/txt2img", params={"width": "1024", "height": "768"})
    cpu_only = client.simulate_post(
        "/api/txt2img", params={"width": "1024", "height": "768", "platform": "cpu"}
    )

    assert anywhere.status_code == 200, anywhere.text
    assert cpu_only.status_code == 400


def test_a_worker_of_unknown_memory_admits_anything(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    announce(job_store, "unknown", "cpu", None)
    announce(job_store, "small", "cpu", GIB)
    client = client_for(job_store, object_store, models, tmp_path)

    assert client.simulate_post("/api/txt2img", params={"width": "1024", "height": "768"}).status_code == 200


def test_with_no_live_worker_the_configured_limit_applies(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    client = client_for(job_store, object_store, models, tmp_path, max_job_memory=8 * GIB)

    result = client.simulate_post("/api/txt2img", params={"width": "1024", "height": "768"})

    assert result.status_code == 400 and "limit holds 8.0 GiB" in error_of(result)


def test_workers_claim_only_the_jobs_that_fit_them(job_store: JobStore) -> None:
    job_store.enqueue(new_job(memory={"cpu": 10 * GIB, "gpu": 2 * GIB}))

    assert (
        job_store.claim("small", platform="cpu", held_models=[], memory_kind="cpu", memory_bytes=4 * GIB)
        is None
    )
    claimed = job_store.claim("gpu", platform="cpu", held_models=[], memory_kind="gpu", memory_bytes=4 * GIB)
    assert claimed is not None


def test_unknown_sizes_on_either_side_match_as_before(job_store: JobStore) -> None:
    job_store.enqueue(new_job(memory=None))
    job_store.enqueue(new_job(memory={"cpu": 10 * GIB, "gpu": GIB}))

    assert (
        job_store.claim("a", platform="cpu", held_models=[], memory_kind="cpu", memory_bytes=GIB) is not None
    )
    assert (
        job_store.claim("b", platform="cpu", held_models=[], memory_kind="cpu", memory_bytes=None) is not None
    )


def test_an_image_grown_past_the_output_limit_is_refused_naming_the_parameter(
    job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    """Highres iterations multiply the size (4 x 4 times 512 px is 131072 px a side) while each
    tiled pass stays small in memory: the size itself is bounded."""
    client = client_for(job_store, object_store, models, tmp_path, max_output_pixels=2048 * 2048)
    highres = {"width": "512", "height": "512", "steps": "1", "highres": "true", "highresMethod": "lanczos"}

    refused = client.simulate_post(
        "/api/txt2img", params={**highres, "highresScale": "4", "highresIterations": "4"}
    )
    accepted = client.simulate_post(
        "/api/txt2img", params={**highres, "highresScale": "4", "highresIterations": "1"}
    )
    chain = client.simulate_post(
        "/api/chain",
        json={
            "stages": [
                {
                    "name": "start",
                    "type": "source-txt2img",
                    "params": {"width": 512, "height": 512, "steps": 1},
                },
                {"name": "big", "type": "upscale-simple", "params": {"scale": 4}},
                {"name": "bigger", "type": "upscale-simple", "params": {"scale": 4}},
            ]
        },
    )

    assert refused.status_code == 400
    error = error_of(refused)
    assert "highresScale" in error and "131072x131072" in error and str(2048 * 2048) in error, error
    assert accepted.status_code == 200, accepted.text
    assert chain.status_code == 400
    assert "stages[2]" in error_of(chain) and "8192x8192" in error_of(chain), error_of(chain)

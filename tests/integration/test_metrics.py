"""``/metrics`` on real Postgres and S3: request latencies, the queue as the database holds it, and
the samples a real worker records while it runs a job on the demo model.

The api and the worker run in this process without ``PROMETHEUS_MULTIPROC_DIR``, so their samples
share prometheus_client's default registry across tests: every assertion is on a difference
between two scrapes, never on an absolute count.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import falcon.testing
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service.config import Config
from service.db import make_engine
from service.jobs.notify import Notifier
from service.jobs.store import JobStore
from service.storage import ObjectStore
from service.worker import Worker, worker_sessions
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, new_job
from tests.integration.api import api_client, make_models
from tests.integration.workers import make_job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: falcon.testing.TestClient) -> Samples:
    """Every sample of one ``GET /metrics``, by name and labels (and that it parses)."""
    result = client.simulate_get("/metrics")
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(result.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the scrape has no such sample."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def has(samples: Samples, name: str, **labels: str) -> bool:
    """Whether the scrape has this sample at all."""
    return (name, frozenset(labels.items())) in samples


def test_metrics_count_requests_by_route_template_and_status(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)
    histogram = "onnx_web_http_request_duration_seconds_count"
    before = scrape(client)

    for _ in range(3):
        assert client.simulate_get("/api/settings/params").status_code == 200
    assert client.simulate_get("/api/job/status", params={"jobs": "no-such-job"}).status_code == 200
    assert client.simulate_post("/api/txt2img", params={"steps": "0"}).status_code == 400
    after = scrape(client)

    def added(route: str, method: str, status: str) -> float:
        labels = {"route": route, "method": method, "status": status}
        return value(after, histogram, **labels) - value(before, histogram, **labels)

    assert added("/api/settings/params", "GET", "200") == 3
    assert added("/api/job/status", "GET", "200") == 1
    assert added("/api/txt2img", "POST", "400") == 1
    # Labels are route templates, so a job name or a query never becomes a series of its own.
    assert not any("no-such-job" in str(labels) for _, labels in after)


def test_metrics_show_the_queue_by_state_and_model_and_the_live_workers(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)
    for model in ("model-a", "model-a", "model-a", "model-b"):
        job_store.enqueue(new_job(model=model))
    claimed = job_store.claim("w-metrics", platform="cpu", held_models=("model-a",))
    assert claimed is not None and claimed.model == "model-a"
    job_store.announce_worker(
        "w-metrics", platform="cpu", providers=["CPUExecutionProvider"], models=[], version="t", jobs_done=0
    )

    samples = scrape(client)

    assert value(samples, "onnx_web_database_up") == 1
    assert value(samples, "onnx_web_jobs", state="pending", model="model-a") == 2
    assert value(samples, "onnx_web_jobs", state="pending", model="model-b") == 1
    assert value(samples, "onnx_web_jobs", state="running", model="model-a") == 1
    assert value(samples, "onnx_web_jobs_pending") == 3
    for model in ("model-a", "model-b"):
        assert has(samples, "onnx_web_jobs_oldest_age_seconds", state="pending", model=model)
        assert value(samples, "onnx_web_jobs_oldest_age_seconds", state="pending", model=model) >= 0
    assert value(samples, "onnx_web_workers", platform="cpu") == 1
    assert has(samples, "onnx_web_worker_heartbeat_age_seconds", worker="w-metrics")


def test_metrics_answer_during_a_database_outage_with_the_database_marked_down(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    # Nothing listens on port 9: every connection is refused at once.
    unreachable = JobStore(
        make_engine("postgresql://nobody@127.0.0.1:9/none"),
        lease_s=TEST_LEASE_S,
        affinity_window_s=TEST_AFFINITY_WINDOW_S,
    )
    client = api_client(unreachable, object_store, make_models(tmp_path / "models"), tmp_path)

    samples = scrape(client)

    assert value(samples, "onnx_web_database_up") == 0
    assert not any(name == "onnx_web_jobs" for name, _ in samples)


def test_a_worker_records_the_job_its_phases_its_queue_wait_and_its_model_loads(
    database_url: str, job_store: JobStore, object_store: ObjectStore, models: Path, tmp_path: Path
) -> None:
    job = make_job(models, steps=2)
    stage_type = job.chain["stages"][0]["type"]
    model = str(job.model)

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    watched = {
        "job": (
            "onnx_web_job_duration_seconds_count",
            {"kind": job.kind, "model": model, "outcome": "success"},
        ),
        "ended": ("onnx_web_job_attempts_ended_total", {"outcome": "success", "reason": ""}),
        "stage": ("onnx_web_job_phase_duration_seconds_count", {"phase": stage_type, "model": model}),
        "store": ("onnx_web_job_phase_duration_seconds_count", {"phase": "store_outputs", "model": model}),
        "wait": ("onnx_web_job_queue_wait_seconds_count", {"model": model}),
        "loads": ("onnx_web_model_load_seconds_count", {"model": model}),
    }
    before = {key: count(name, **labels) for key, (name, labels) in watched.items()}
    job_store.enqueue(job)
    config = Config(
        database_url=database_url,
        models_path=models,
        s3_bucket=object_store.bucket,
        worker_id="w-metrics",
        heartbeat_s=0.05,
        poll_interval_s=0.05,
    )
    with closing(Notifier(database_url)) as notifier:
        worker = Worker(
            config, jobs=job_store, store=object_store, sessions=worker_sessions(config), notifier=notifier
        )
        worker.run(max_jobs=1)
    added = {key: count(name, **labels) - before[key] for key, (name, labels) in watched.items()}

    assert job_store.get_many([job.name])[job.name].state.value == "success"
    assert added["job"] == added["ended"] == added["stage"] == added["store"] == added["wait"] == 1
    # A diffusion model is several ONNX files (text encoder, UNet, VAE decoder): one load each.
    assert added["loads"] >= 3
    # And the api's scrape carries them, in the same process.
    client = api_client(job_store, object_store, make_models(tmp_path / "api-models"), tmp_path)
    samples = scrape(client)
    assert value(samples, "onnx_web_job_phase_duration_seconds_count", phase=stage_type, model=model) >= 1

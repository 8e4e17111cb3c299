"""``/metrics`` of the whole local stack: the api's gunicorn processes and the worker process share
one samples folder, so the api's scrape shows the job the worker ran, as Prometheus would see it."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import finished, wait_for

#: How long the worker's samples of a finished job may take to reach a scrape.
SAMPLES_TIMEOUT_S = 10.0


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (metric, have), value in samples.items() if metric == name and wanted <= have)


def test_the_apis_scrape_carries_the_workers_job_samples_and_its_own_requests(client: httpx.Client) -> None:
    before = scrape(client)
    params = {"prompt": "a metrics lighthouse", "steps": 2, "width": 128, "height": 128}
    job = client.post("/api/txt2img", params=params)
    assert job.status_code == 200, job.text
    assert wait_for(client, job.json()["name"], until=finished)[-1]["status"] == "success"

    # The worker records a job's samples just after its commit: a scrape right after the status
    # says success may come between the two, so the samples are awaited (a few seconds at most).
    deadline = time.monotonic() + SAMPLES_TIMEOUT_S
    after = scrape(client)
    while (
        total(after, "onnx_web_job_phase_duration_seconds_count", phase="store_outputs")
        <= total(before, "onnx_web_job_phase_duration_seconds_count", phase="store_outputs")
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
        after = scrape(client)

    def added(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Written by the worker process, read by whichever api process answered the scrape.
    assert added("onnx_web_job_duration_seconds_count", kind="txt2img", outcome="success") >= 1
    assert added("onnx_web_job_phase_duration_seconds_count", phase="source-txt2img") >= 1
    assert added("onnx_web_job_phase_duration_seconds_count", phase="store_outputs") >= 1
    assert added("onnx_web_job_queue_wait_seconds_count") >= 1
    assert added("onnx_web_job_attempts_ended_total", outcome="success") >= 1
    # The api's own requests, from every gunicorn process: at least the submission and our polls.
    assert added("onnx_web_http_request_duration_seconds_count", route="/api/txt2img", status="200") >= 1
    assert added("onnx_web_http_request_duration_seconds_count", route="/api/job/status", status="200") >= 1
    assert total(after, "onnx_web_database_up") == 1
    assert total(after, "onnx_web_workers") >= 1

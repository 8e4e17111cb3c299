"""The load ``make test-load`` puts on the api (locust; ``bench/load.py`` runs it headless).

Each simulated GUI polls the status of the seeded jobs (ten names a call, as the GUI batches
them), fetches their outputs (images, thumbnails, metadata sidecars) and now and then submits a
small txt2img job on the demo model. ``bench/load.py`` passes the seeded names in
``LOAD_JOBS`` and ``LOAD_OUTPUTS`` (JSON lists) and where to write the failures in
``LOAD_FAILURES``. Any 5xx is a failure named ``5xx``; any other answer but the expected one is a
failure too.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

JOBS: list[str] = json.loads(os.environ.get("LOAD_JOBS", "[]"))
OUTPUTS: list[str] = json.loads(os.environ.get("LOAD_OUTPUTS", "[]"))
#: The smallest job the demo model runs: one step at the smallest size params.json allows.
SUBMISSION = {"prompt": "a lighthouse at dusk", "steps": 1, "width": 128, "height": 128}
MAX_SEED = 2**32 - 1


@events.quitting.add_listener
def save_failures(environment: Environment, **kwargs: Any) -> None:
    """Write every failure with its count to ``LOAD_FAILURES`` (locust's CSV is written before the end)."""
    path = os.environ.get("LOAD_FAILURES")
    # With ``--processes``, only the master holds every process's errors; its workers write nothing.
    if isinstance(environment.runner, WorkerRunner):
        return
    if path and environment.stats is not None:
        failures = [
            {"route": f"{error.method} {error.name}", "error": error.error, "count": error.occurrences}
            for error in environment.stats.errors.values()
        ]
        with open(path, "w") as file:
            json.dump(failures, file)


def check(response: Any, expected: int) -> None:
    """Mark anything but ``expected`` failed; a 5xx under a name of its own."""
    if response.status_code >= 500:
        response.failure(f"5xx: {response.status_code} {(response.text or '')[:200]}")
    elif response.status_code != expected:
        # A connection error has no body: status 0 and no text.
        response.failure(f"unexpected {response.status_code}: {(response.text or '')[:200]}")
    else:
        response.success()


class GuiUser(FastHttpUser):
    """One GUI tab: mostly polling, some output downloads, a submission now and then."""

    # Think time between one tab's requests, MIN,MAX seconds (``bench/load.py --think``).
    wait_time = between(*(float(bound) for bound in os.environ.get("LOAD_THINK_S", "0.05,0.25").split(",")))

    @task(10)
    def status(self) -> None:
        with self.client.get(
            "/api/job/status", params={"jobs": ",".join(JOBS)}, name="/api/job/status", catch_response=True
        ) as response:
            check(response, 200)

    @task(5)
    def output(self) -> None:
        with self.client.get(
            f"/output/{random.choice(OUTPUTS)}", name="/output/[file]", catch_response=True
        ) as response:
            check(response, 200)

    @task(1)
    def submit(self) -> None:
        body = {**SUBMISSION, "seed": random.randrange(MAX_SEED)}
        with self.client.post(
            "/api/txt2img", json=body, name="/api/txt2img", catch_response=True
        ) as response:
            check(response, 200)

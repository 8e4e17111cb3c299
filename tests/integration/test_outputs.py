"""``GET /output/<name>`` on a real Postgres and a real S3 server: one narrow lookup per file.

The route serves only keys a succeeded row recorded, and finds them by the job's unique name
alone: it never runs the status query, which ranks every pending job to compute queue places.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy

from service.jobs.store import JobStore
from service.output_names import image_name, sidecar_name, thumbnail_name
from service.storage import ObjectStore, output_key
from tests.fixtures.postgres import new_job, seed_jobs
from tests.integration.api import api_client, job_name, png, succeed

pytestmark = pytest.mark.integration

#: What only the status query's queue ranking runs.
RANKING = "row_number()"


@pytest.fixture
def client(job_store: JobStore, object_store: ObjectStore, tmp_path: Path) -> falcon.testing.TestClient:
    models = tmp_path / "models"
    models.mkdir()
    return api_client(job_store, object_store, models, tmp_path)


@pytest.fixture
def statements(engine: sqlalchemy.Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the test runs."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sqlalchemy.event.listen(engine, "before_cursor_execute", record)
    yield sent
    sqlalchemy.event.remove(engine, "before_cursor_execute", record)


def test_images_thumbnails_and_sidecars_are_served_by_one_narrow_lookup_each(
    client: falcon.testing.TestClient,
    job_store: JobStore,
    object_store: ObjectStore,
    engine: sqlalchemy.Engine,
    statements: list[str],
) -> None:
    name = job_name()
    files = succeed(job_store, object_store, name)
    seed_jobs(engine, 3)  # a queue to rank, were the route to rank it
    statements.clear()
    for file, data in files.items():
        result = client.simulate_get(f"/output/{file}")
        assert result.status_code == 200, (file, result.text)
        assert result.content == data
        expected = "application/json" if file.endswith(".json") else "image/png"
        assert result.headers["content-type"] == expected
        assert client.simulate_head(f"/output/{file}").headers["content-length"] == str(len(data))
    assert json.loads(client.simulate_get(f"/output/{image_name(name, 0, 'png')}.json").text) == {
        "outputs": [image_name(name, 0, "png")]
    }
    assert len(statements) == 2 * len(files) + 1, statements  # one per GET or HEAD
    assert all("output_keys ->>" in statement for statement in statements), statements
    assert not [statement for statement in statements if RANKING in statement]


def test_the_status_query_ranks_the_queue(job_store: JobStore, statements: list[str]) -> None:
    """The capture sees the ranking when it runs, so its absence above means something."""
    job_store.get_many([job_name()])
    assert [statement for statement in statements if RANKING in statement]


def test_unknown_and_unsucceeded_names_are_404(
    client: falcon.testing.TestClient, job_store: JobStore, object_store: ObjectStore, statements: list[str]
) -> None:
    done, running, waiting = job_name(), job_name(), job_name()
    succeed(job_store, object_store, done)
    job_store.enqueue(new_job(name=running))
    job_store.enqueue(new_job(name=waiting))
    claimed = job_store.claim("w-2", platform="cpu", held_models=())
    assert claimed is not None and claimed.name == running  # first in, first claimed
    # An object the running attempt already wrote, but whose job has not succeeded: never served.
    written = image_name(running, 0, "png")
    object_store.put_bytes(output_key(running, claimed.attempt, written), png((1, 2, 3)), "image/png")
    statements.clear()
    for file in [
        image_name(job_name(), 0, "png"),  # no such job
        written,  # running: written, not recorded
        image_name(waiting, 0, "png"),  # pending
        image_name(done, 1, "png"),  # a succeeded job, but not a file it recorded
        thumbnail_name(done, 1, "png"),
        sidecar_name(image_name(done, 1, "png")),
    ]:
        result = client.simulate_get(f"/output/{file}")
        assert result.status_code == 404, (file, result.text)
        assert result.json["error"]
        assert client.simulate_head(f"/output/{file}").status_code == 404
    assert statements and not [statement for statement in statements if RANKING in statement]

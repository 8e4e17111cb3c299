"""``GET /api/job/events``: every progress write and the end of a job, pushed as it happens.

The stream is read as the WSGI server reads it, one chunk at a time, while the test moves the job
through its states with the real ``JobStore`` on a real Postgres, whose triggers send the
notifications (migration 0007).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy

from service.db import make_engine
from service.events import EventHub
from service.jobs.keys import KeyStore
from service.jobs.store import JobStore
from service.storage import ObjectStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S
from tests.integration.api import api_client, make_models

pytestmark = pytest.mark.integration


@pytest.fixture
def hub(database_url: str) -> Iterator[EventHub]:
    events = EventHub(database_url)
    yield events
    events.stop()


@pytest.fixture
def client(
    job_store: JobStore, object_store: ObjectStore, hub: EventHub, tmp_path: Path
) -> falcon.testing.TestClient:
    return api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path, events=hub)


class Stream:
    """One open event stream, read an event at a time."""

    def __init__(self, client: falcon.testing.TestClient, names: str, headers: dict[str, str] | None = None):
        env = falcon.testing.create_environ(
            path="/api/job/events", query_string=f"jobs={names}", headers=headers or {}
        )
        self.start = falcon.testing.StartResponseMock()
        self.body = client.app(env, self.start)
        self._chunks = iter(self.body)

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next event (skipping the reconnect hint and heartbeats): its type and data."""
        for chunk in self._chunks:
            fields = dict(
                line.split(": ", 1)
                for line in chunk.decode().splitlines()
                if ": " in line and not line.startswith(":")
            )
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.body.close()


def submit(client: falcon.testing.TestClient) -> str:
    result = client.simulate_post("/api/txt2img", params={"prompt": "cat", "steps": "3"})
    assert result.status_code == 200, result.text
    return str(result.json["name"])


def test_every_progress_write_and_the_end_arrive_in_order(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    name = submit(client)
    stream = Stream(client, name)
    assert stream.start.status.startswith("200")
    assert stream.start.headers_dict["Content-Type"] == "text/event-stream"

    kind, first = stream.next()
    assert (kind, first["status"]) == ("status", "pending")

    job = job_store.claim("w", platform="cpu", held_models=())
    assert job is not None
    assert stream.next()[1]["status"] == "running"
    seen = []
    for step in (1, 2, 3):
        job_store.progress(job.id, "w", job.attempt, (step, 4), (0, 2), (0, 0))
        seen.append(stream.next()[1]["steps"]["current"])
    job_store.finish_failed(job.id, "w", job.attempt, reason="oom", message="x", retryable=False)
    kind, last = stream.next()
    end, data = stream.next()
    stream.close()

    assert seen == [1, 2, 3]
    assert (kind, last["status"], last["reason"]) == ("status", "failed", "oom")
    assert (end, data) == ("end", {"jobs": [name]})


def test_a_reconnect_gets_the_current_record_first(
    client: falcon.testing.TestClient, job_store: JobStore
) -> None:
    name = submit(client)
    first = Stream(client, name)
    first.next()
    first.close()
    job = job_store.claim("w", platform="cpu", held_models=())
    assert job is not None
    job_store.progress(job.id, "w", job.attempt, (2, 4), (0, 2), (0, 0))

    again = Stream(client, name, {"Last-Event-ID": "1"})
    kind, record = again.next()
    again.close()

    assert (kind, record["status"], record["steps"]["current"]) == ("status", "running", 2)


def test_an_unknown_job_ends_the_stream_at_once(client: falcon.testing.TestClient) -> None:
    stream = Stream(client, "txt2img_1_nope_1")

    assert stream.next()[1]["status"] == "unknown"
    assert stream.next()[0] == "end"


def test_streams_are_bounded_per_process_and_per_owner(
    job_store: JobStore, object_store: ObjectStore, hub: EventHub, engine: Any, tmp_path: Path
) -> None:
    keys = KeyStore(engine)
    _, text = keys.create("alice")
    headers = {"Authorization": f"Bearer {text}"}
    models = make_models(tmp_path / "models")
    client = api_client(
        job_store, object_store, models, tmp_path, keys=keys, events=hub, auth="keys", api_threads=20
    )
    name = client.simulate_post("/api/txt2img", params={"prompt": "cat"}, headers=headers).json["name"]

    open_streams = [Stream(client, name, headers) for _ in range(4)]
    refused = Stream(client, name, headers)
    assert refused.start.status.startswith("429")
    for stream in open_streams:
        stream.close()
    assert Stream(client, name, headers).start.status.startswith("200")

    small = api_client(job_store, object_store, models, tmp_path, events=hub, api_threads=2)
    held = Stream(small, name)
    assert Stream(small, name).start.status.startswith("503")
    held.close()


def test_a_database_outage_at_the_start_is_a_503_and_gives_the_stream_back(
    object_store: ObjectStore, hub: EventHub, tmp_path: Path
) -> None:
    engine: sqlalchemy.Engine = make_engine("postgresql://nobody:secret@127.0.0.1:1/onnx_web")
    down = JobStore(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
    client = api_client(
        down, object_store, make_models(tmp_path / "models"), tmp_path, events=hub, api_threads=2
    )

    for _ in range(2):  # one stream per process here: the refused one must not keep its place
        stream = Stream(client, "x")
        body = json.loads(b"".join(stream.body))

        assert stream.start.status.startswith("503")
        assert stream.start.headers_dict["Content-Type"].startswith("application/json")
        assert int(stream.start.headers_dict["Retry-After"]) > 0
        assert "database" in body["error"]


def test_a_database_outage_mid_stream_ends_it_with_an_event_and_one_log_line(
    client: falcon.testing.TestClient,
    job_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = submit(client)
    stream = Stream(client, name)
    assert stream.next()[1]["status"] == "pending"

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(job_store, "get_many", refused)
    with caplog.at_level(logging.WARNING):
        job_store.cancel(name)  # a notification: the stream reads its job again
        kind, data = stream.next()
        with pytest.raises(AssertionError, match="the stream ended"):
            stream.next()
    stream.close()

    assert kind == "unavailable" and "database" in data["error"] and data["retryAfter"] > 0
    logged = [record for record in caplog.records if record.name.startswith("service")]
    assert [(record.levelno, record.exc_info) for record in logged] == [(logging.WARNING, None)]

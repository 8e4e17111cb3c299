"""Job-end callbacks: a signed POST of the record when a job ends, retried until it is taken.

A real HTTP receiver on loopback (allowed here by ``callback_allow_private``), a real Postgres
whose trigger writes the outbox row in the job's own transaction, and the api's dispatcher run
one batch at a time. Time travels in SQL: a retry is made due by moving ``next_attempt_at``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import sqlalchemy

from service.callbacks import BATCH, MAX_ATTEMPTS, TIMEOUT_S, CallbackDispatcher, owner_signing_key
from service.jobs.callbacks import CallbackStore
from service.jobs.store import JobStore
from service.storage import ObjectStore
from tests.fixtures.postgres import new_job
from tests.integration.api import api_client, error_of, make_models

pytestmark = pytest.mark.integration

SECRET = "callback-secret"


class Receiver:
    """An HTTP server that records each POST and answers with the next status in ``answers``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []
        #: Run as each POST arrives, before it is answered.
        self.on_post: Callable[[], None] = lambda: None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.on_post()
                receiver.received.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.answers.pop(0) if receiver.answers else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def client(job_store: JobStore, object_store: ObjectStore, tmp_path: Path) -> falcon.testing.TestClient:
    models = make_models(tmp_path / "models")
    return api_client(
        job_store, object_store, models, tmp_path, callback_secret=SECRET, callback_allow_private=True
    )


@pytest.fixture
def dispatcher(engine: sqlalchemy.Engine, job_store: JobStore) -> CallbackDispatcher:
    return CallbackDispatcher(CallbackStore(engine), job_store, SECRET, allow_private=True)


def end_job(job_store: JobStore, name: str) -> None:
    job = job_store.claim("w", platform="cpu", held_models=())
    assert job is not None and job.name == name
    job_store.finish_failed(job.id, "w", job.attempt, reason="oom", message="x", retryable=False)


def test_an_ended_job_is_posted_once_signed(
    client: falcon.testing.TestClient, job_store: JobStore, dispatcher: CallbackDispatcher, receiver: Receiver
) -> None:
    name = client.simulate_post("/api/txt2img", params={"prompt": "cat", "callback": receiver.url}).json[
        "name"
    ]
    assert dispatcher.deliver_due() == 0, "nothing is sent before the job ends"

    end_job(job_store, name)
    assert dispatcher.deliver_due() == 1
    assert dispatcher.deliver_due() == 0

    [post] = receiver.received
    record = json.loads(post["body"])
    assert (record["name"], record["status"], record["reason"]) == (name, "failed", "oom")
    signed = post["headers"]["X-Onnx-Web-Timestamp"].encode() + b"." + post["body"]
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post["headers"]["X-Onnx-Web-Signature"], expected)


def signature(key: str, post: dict[str, Any]) -> str:
    signed = post["headers"]["X-Onnx-Web-Timestamp"].encode() + b"." + post["body"]
    return "sha256=" + hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()


def test_in_keys_mode_each_owner_verifies_with_a_key_that_signs_for_it_alone(
    engine: sqlalchemy.Engine, job_store: JobStore, receiver: Receiver
) -> None:
    outbox = CallbackStore(engine)
    per_owner = CallbackDispatcher(outbox, job_store, SECRET, allow_private=True, per_owner=True)
    names = {}
    for owner in ("alice", "bob"):
        names[owner] = job_store.enqueue(new_job(owner=owner, callback=receiver.url)).name
        end_job(job_store, names[owner])
    assert per_owner.deliver_due() == 2

    posts = {json.loads(post["body"])["name"]: post for post in receiver.received}
    alice, bob = owner_signing_key(SECRET, "alice"), owner_signing_key(SECRET, "bob")
    assert len({alice, bob, SECRET}) == 3
    sent = posts[names["alice"]]["headers"]["X-Onnx-Web-Signature"]
    assert sent == signature(alice, posts[names["alice"]])
    # Neither the server's secret nor bob's key (all bob holds) makes alice's signature.
    assert sent not in (signature(SECRET, posts[names["alice"]]), signature(bob, posts[names["alice"]]))
    assert posts[names["bob"]]["headers"]["X-Onnx-Web-Signature"] == signature(bob, posts[names["bob"]])


def test_a_failing_receiver_is_retried_with_backoff_then_given_up(
    client: falcon.testing.TestClient,
    job_store: JobStore,
    dispatcher: CallbackDispatcher,
    receiver: Receiver,
    engine: sqlalchemy.Engine,
) -> None:
    name = client.simulate_post(
        "/api/job",
        json={
            "callback": receiver.url,
            "stages": [{"name": "gen", "type": "source-txt2img", "params": {"prompt": "cat"}}],
        },
    ).json["name"]
    end_job(job_store, name)
    receiver.answers = [500] * MAX_ATTEMPTS
    waits = []
    for _ in range(MAX_ATTEMPTS):
        assert dispatcher.deliver_due() == 1
        assert dispatcher.deliver_due() == 0, "a failed try waits for its backoff"
        with engine.begin() as conn:
            waits.append(
                conn.execute(
                    sqlalchemy.text("SELECT extract(epoch FROM next_attempt_at - now()) FROM callbacks")
                ).scalar_one()
            )
            conn.execute(sqlalchemy.text("UPDATE callbacks SET next_attempt_at = now()"))

    assert len(receiver.received) == MAX_ATTEMPTS
    assert all(later > earlier for earlier, later in itertools.pairwise(waits[:-1]))
    assert dispatcher.deliver_due() == 0, "given up after the last attempt"
    with engine.begin() as conn:
        row = conn.execute(sqlalchemy.text("SELECT attempts, gave_up_at, last_error FROM callbacks")).one()
    assert row.attempts == MAX_ATTEMPTS and row.gave_up_at is not None and "500" in row.last_error


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http://169.254.169.254/latest", "http://user:pw@example.com/", 7]
)
def test_a_callback_that_is_not_a_public_http_url_is_a_400(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path, url: object
) -> None:
    client = api_client(
        job_store, object_store, make_models(tmp_path / "models"), tmp_path, callback_secret=SECRET
    )
    result = client.simulate_post("/api/txt2img", json={"prompt": "cat", "callback": url})

    assert result.status_code == 400 and error_of(result).startswith("callback")
    assert job_store.queue_depth() == 0


def test_without_a_secret_the_server_takes_no_callbacks(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)
    result = client.simulate_post("/api/txt2img", params={"callback": "https://example.com/hook"})

    assert result.status_code == 400 and "ONNX_WEB_CALLBACK_SECRET" in error_of(result)


def test_two_dispatchers_post_each_callback_once_however_long_the_receivers_take(
    job_store: JobStore, engine: sqlalchemy.Engine, receiver: Receiver
) -> None:
    """Two api processes share the outbox. Each receiver here takes a dispatcher's whole timeout
    (in SQL: every POST moves the outbox's clock back by ``TIMEOUT_S``); a delivery must stay with
    the dispatcher that claimed it until that one has tried it, not be taken and posted again by
    the other while the first still works through the receivers before it."""
    jobs = [new_job(callback=receiver.url) for _ in range(BATCH)]
    for job in jobs:
        job_store.enqueue(job)
        end_job(job_store, job.name)
    names = [job.name for job in jobs]
    receiver.on_post = lambda: _shift_outbox(engine, -TIMEOUT_S)
    dispatchers = [
        CallbackDispatcher(CallbackStore(engine), job_store, SECRET, allow_private=True) for _ in "ab"
    ]

    def drain(dispatcher: CallbackDispatcher) -> None:
        for _ in range(10 * BATCH):
            if dispatcher.deliver_due() == 0 and _undelivered(engine) == 0:
                return

    threads = [threading.Thread(target=drain, args=(dispatcher,)) for dispatcher in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    posted = sorted(json.loads(post["body"])["name"] for post in receiver.received)
    assert posted == sorted(names), "a callback was posted more than once, or not at all"
    with engine.begin() as conn:
        attempts = conn.execute(sqlalchemy.text("SELECT attempts FROM callbacks")).scalars().all()
    assert attempts == [1] * BATCH


def _shift_outbox(engine: sqlalchemy.Engine, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "UPDATE callbacks SET next_attempt_at = next_attempt_at + make_interval(secs => :s)"
            ),
            {"s": seconds},
        )


def _undelivered(engine: sqlalchemy.Engine) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM callbacks WHERE delivered_at IS NULL AND gave_up_at IS NULL"
                )
            ).scalar_one()
        )

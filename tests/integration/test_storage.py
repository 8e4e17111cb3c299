"""The object store contract (spec/reliability.md S1, S2), held by every ``ObjectStore``.

The contract tests run on ``S3ObjectStore`` against a real S3 server and on
``MemoryObjectStore``, so the fake that unit tests lean on cannot drift from the real thing.
The tests after them need a real server: presigned URLs over HTTP, refused credentials, and
retries through a proxy that resets, stalls, cuts and throttles connections.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from service.config import Config
from service.errors import ConfigError, NotFound, StorageError
from service.stack import S3Credentials
from service.storage import (
    CHUNK_BYTES,
    MAX_PRESIGN_S,
    MemoryObjectStore,
    ObjectStore,
    RetryPolicy,
    S3ObjectStore,
    from_config,
    input_key,
    output_key,
    output_prefix,
    parse_endpoint,
)
from tests.fixtures.s3 import Fault, FaultyProxy, make_store

pytestmark = pytest.mark.integration

BAD_KEYS = [
    "../x",
    "/abs",
    "a/../b",
    "a/./b",
    "a//b",
    "a/",
    "",
    "a\x00b",
    "tab\there",
    "a\\..\\b",
    "k" * 2000,
]

#: Every store method that takes a key, called with that key.
KEYED_CALLS: dict[str, Callable[[ObjectStore, str], object]] = {
    "put_bytes": lambda store, key: store.put_bytes(key, b"x", "text/plain"),
    "get_bytes": lambda store, key: store.get_bytes(key),
    "get_stream": lambda store, key: store.get_stream(key),
    "stat": lambda store, key: store.stat(key),
    "exists": lambda store, key: store.exists(key),
    "delete": lambda store, key: store.delete(key),
    "presign_get": lambda store, key: store.presign_get(key, 60),
}


@pytest.fixture(params=["s3", "memory"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each implementation in turn; the S3 one on a fresh bucket of its own."""
    if request.param == "memory":
        return MemoryObjectStore()
    s3: S3ObjectStore = request.getfixturevalue("object_store")
    return s3


@pytest.fixture
def other_client(store: ObjectStore, request: pytest.FixtureRequest) -> ObjectStore:
    """A second client on the same objects: its own connection pool for S3, the same dict in memory."""
    if isinstance(store, S3ObjectStore):
        return make_store(request.getfixturevalue("s3_credentials"), store.bucket)
    return store


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """Read the retry warnings ``service.storage`` has logged so far in the test."""
    caplog.set_level(logging.WARNING, logger="service.storage")
    # caplog.records is a new list in each test phase, so it is read when called, not now.
    return lambda: [record for record in caplog.records if getattr(record, "action", None) == "s3_retry"]


# --- the contract, on every store -------------------------------------------------------------------


def test_put_then_get_from_another_client_returns_the_same_bytes(
    store: ObjectStore, other_client: ObjectStore
) -> None:
    key = output_key("job1", 1, "job1_0.png")
    data = os.urandom(100_000)
    etag = store.put_bytes(key, data, "image/png", {"seed": "42", "job-name": "job1"})

    assert other_client.get_bytes(key) == data
    with other_client.get_stream(key) as stream:
        assert b"".join(stream) == data
        assert (stream.size, stream.content_type, stream.etag) == (len(data), "image/png", etag)
        assert stream.info.metadata == {"seed": "42", "job-name": "job1"}
    info = other_client.stat(key)
    assert (info.key, info.size, info.content_type, info.etag) == (key, len(data), "image/png", etag)
    assert info.metadata == {"seed": "42", "job-name": "job1"}
    assert etag == hashlib.md5(data).hexdigest()  # a single PUT, never a multipart ETag
    assert other_client.exists(key)


def test_overwrite_then_get_returns_the_new_bytes(store: ObjectStore, other_client: ObjectStore) -> None:
    key = input_key("job1", "source")
    store.put_bytes(key, b"old", "image/png")
    store.put_bytes(key, b"new bytes", "image/webp")

    assert other_client.get_bytes(key) == b"new bytes"
    assert other_client.stat(key).content_type == "image/webp"


def test_an_empty_object_round_trips(store: ObjectStore) -> None:
    store.put_bytes("empty.json", b"", "application/json")

    assert store.get_bytes("empty.json") == b""
    with store.get_stream("empty.json") as stream:
        assert list(stream) == []
    assert store.stat("empty.json").size == 0


def test_delete_then_get_is_not_found(store: ObjectStore, other_client: ObjectStore) -> None:
    key = output_key("job1", 1, "job1_0.png")
    store.put_bytes(key, b"png", "image/png")
    store.delete(key)

    with pytest.raises(NotFound):
        other_client.get_bytes(key)
    with pytest.raises(NotFound):
        other_client.get_stream(key)
    with pytest.raises(NotFound):
        other_client.stat(key)
    assert not other_client.exists(key)
    store.delete(key)  # deleting what is gone is not an error


def test_delete_prefix_removes_exactly_that_prefix(store: ObjectStore) -> None:
    doomed = [output_key("j", 1, "j_0.png"), output_key("j", 1, "j_0.png.json"), "outputs/j/1/deeper/x"]
    kept = [
        output_key("j", 10, "j_0.png"),
        output_key("j", 2, "j_0.png"),
        "outputs/j/1x",
        input_key("j", "source"),
    ]
    for key in doomed + kept:
        store.put_bytes(key, key.encode(), "application/octet-stream")

    assert store.delete_prefix(output_prefix("j", 1)) == len(doomed)

    assert [key for key in doomed if store.exists(key)] == []
    assert [key for key in kept if store.get_bytes(key) != key.encode()] == []
    assert store.delete_prefix(output_prefix("j", 1)) == 0
    with pytest.raises(ValueError, match="end with '/'"):
        store.delete_prefix("outputs/j/1")  # would also match outputs/j/10/...


def test_list_written_gives_each_key_under_a_prefix_its_time_of_writing(store: ObjectStore) -> None:
    before = datetime.now(UTC)
    for key in (input_key("a", "source"), input_key("a", "mask"), input_key("ab", "source")):
        store.put_bytes(key, b"x", "image/png")
    after = datetime.now(UTC)

    written = store.list_written("inputs/a/")

    assert sorted(written) == [input_key("a", "mask"), input_key("a", "source")]
    # The test's S3 server runs on this host, on this clock, keeping whole seconds at least.
    slack = timedelta(seconds=1)
    assert [at for at in written.values() if not before - slack <= at <= after + slack] == []


def test_a_large_object_streams_intact_in_bounded_memory(store: ObjectStore) -> None:
    data = os.urandom(20 * 1024 * 1024)
    etag = store.put_bytes("big.bin", data, "application/octet-stream")
    # An MD5 ETag means one PUT: a multipart upload, which is not atomic, would end in "-<parts>".
    assert etag == hashlib.md5(data).hexdigest()
    expected = hashlib.sha256(data).hexdigest()
    del data

    digest, largest = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        with store.get_stream("big.bin") as stream:
            for chunk in stream:
                digest.update(chunk)
                largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert digest.hexdigest() == expected
    assert largest <= CHUNK_BYTES
    assert peak < 2 * 1024 * 1024, f"reading 20 MB peaked at {peak} bytes of Python memory"


def test_a_stream_closed_early_gives_no_more_bytes(store: ObjectStore) -> None:
    data = os.urandom(4 * CHUNK_BYTES)
    store.put_bytes("big.bin", data, "application/octet-stream")
    stream = store.get_stream("big.bin")
    chunks = iter(stream)
    assert len(next(chunks)) > 0

    stream.close()
    stream.close()

    assert list(stream) == []
    # The abandoned connection must not reach the next request with the rest of its body.
    assert store.get_bytes("big.bin") == data


@pytest.mark.parametrize("call", KEYED_CALLS.values(), ids=KEYED_CALLS.keys())
@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_rejected(
    store: ObjectStore, key: str, call: Callable[[ObjectStore, str], object]
) -> None:
    with pytest.raises(ValueError):
        call(store, key)


@pytest.mark.parametrize(
    "metadata",
    [{"Seed": "1"}, {"a b": "1"}, {"": "1"}, {"note": "caf\u00e9"}, {"note": "a\nb"}, {"x": "y" * 3000}],
)
def test_bad_metadata_is_rejected(store: ObjectStore, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        store.put_bytes("a.png", b"x", "image/png", metadata)
    assert not store.exists("a.png")


def test_ensure_bucket_twice_is_fine(store: ObjectStore) -> None:
    store.ensure_bucket()
    store.ensure_bucket()
    store.put_bytes("a.png", b"x", "image/png")
    assert store.get_bytes("a.png") == b"x"


@pytest.mark.parametrize("expires_s", [0, -1, MAX_PRESIGN_S + 1])
def test_presigned_urls_need_an_expiry_s3_accepts(store: ObjectStore, expires_s: int) -> None:
    with pytest.raises(ValueError, match="expire"):
        store.presign_get("a.png", expires_s)


def test_a_presigned_url_names_its_key(store: ObjectStore) -> None:
    key = output_key("job1", 3, "job1_0.png")
    assert f"/{quote(key)}?" in store.presign_get(key, MAX_PRESIGN_S)


def test_a_missing_key_is_not_found_at_once(
    store: ObjectStore, retry_log: Callable[[], list[logging.LogRecord]]
) -> None:
    with pytest.raises(NotFound):
        store.get_bytes("never/put.png")
    assert retry_log() == []


# --- keys and settings --------------------------------------------------------------------------------


def test_key_helpers_follow_the_layout() -> None:
    assert input_key("0af3", "mask") == "inputs/0af3/mask.png"
    assert output_prefix("0af3", 2) == "outputs/0af3/2/"
    assert output_key("0af3", 2, "0af3_thumbnail_0.png") == "outputs/0af3/2/0af3_thumbnail_0.png"


@pytest.mark.parametrize(
    "build",
    [
        lambda: input_key("..", "source"),
        lambda: input_key("job", "a/b"),
        lambda: input_key("", "source"),
        lambda: input_key("job", "bad\x00field"),
        lambda: output_key("job", -1, "f.png"),
        lambda: output_key("job", True, "f.png"),
        lambda: output_key("job", 1, "../f.png"),
        lambda: output_key("job", 1, "."),
        lambda: output_prefix("a/b", 1),
    ],
)
def test_key_helpers_reject_parts_that_would_change_the_layout(build: Callable[[], str]) -> None:
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1:9000", False)),
        ("http://minio:9000", ("minio:9000", False)),
        ("https://minio.example.com", ("minio.example.com", True)),
        ("https://minio.example.com:9000/", ("minio.example.com:9000", True)),
    ],
)
def test_endpoints_are_host_port_or_a_url(endpoint: str, expected: tuple[str, bool]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint", ["", "ftp://minio:21", "http://minio:9000/bucket", "minio:9000/x", "http://"]
)
def test_other_endpoints_are_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="S3 endpoint"):
        parse_endpoint(endpoint)


def test_from_config_reaches_the_configured_bucket(s3_credentials: S3Credentials, bucket_name: str) -> None:
    endpoint = (
        s3_credentials.endpoint if "://" in s3_credentials.endpoint else f"http://{s3_credentials.endpoint}"
    )
    config = Config(
        s3_endpoint=endpoint,
        s3_access_key=s3_credentials.access_key,
        s3_secret_key=s3_credentials.secret_key,
        s3_bucket=bucket_name,
    )
    store = from_config(config)
    store.ensure_bucket()
    store.put_bytes("a.png", b"x", "image/png")

    assert make_store(s3_credentials, bucket_name).get_bytes("a.png") == b"x"


# --- a real S3 server only ----------------------------------------------------------------------------


def test_a_presigned_get_works_with_plain_urllib_for_its_key_only(object_store: S3ObjectStore) -> None:
    key_a, key_b = output_key("job1", 1, "job1_0.png"), output_key("job1", 1, "job1_1.png")
    object_store.put_bytes(key_a, b"image A", "image/png")
    object_store.put_bytes(key_b, b"image B", "image/png")
    url = object_store.presign_get(key_a, 60)

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"image A"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace(quote(key_a), quote(key_b)), timeout=10)
    refused.value.close()  # the error holds the response and its socket
    assert refused.value.code == 403


def test_a_wrong_secret_is_refused_without_retrying(
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    retry_log: Callable[[], list[logging.LogRecord]],
) -> None:
    object_store.put_bytes("a.png", b"x", "image/png")
    impostor = make_store(
        replace(s3_credentials, secret_key="not-the-secret"),
        object_store.bucket,
        retry=RetryPolicy(backoff_s=5.0),
    )

    with pytest.raises(StorageError, match=r"refused: (SignatureDoesNotMatch|AccessDenied)"):
        impostor.put_bytes("a.png", b"forged", "image/png")
    with pytest.raises(StorageError, match="refused"):
        impostor.get_bytes("a.png")  # a refusal, not a NotFound the api would turn into a 404
    assert retry_log() == []
    assert object_store.get_bytes("a.png") == b"x"


@pytest.mark.parametrize("call", KEYED_CALLS.values(), ids=KEYED_CALLS.keys())
def test_bad_keys_are_rejected_before_any_request(
    s3_proxy: FaultyProxy, s3_credentials: S3Credentials, call: Callable[[ObjectStore, str], object]
) -> None:
    store = make_store(replace(s3_credentials, endpoint=s3_proxy.endpoint), "no-such-bucket")
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            call(store, key)
    assert s3_proxy.connections == 0


@pytest.mark.parametrize("fault", ["reset", "slowdown", "stall"])
def test_transient_faults_are_retried_until_the_put_succeeds(
    s3_proxy: FaultyProxy,
    s3_credentials: S3Credentials,
    object_store: S3ObjectStore,
    retry_log: Callable[[], list[logging.LogRecord]],
    fault: Fault,
) -> None:
    flaky = make_store(
        replace(s3_credentials, endpoint=s3_proxy.endpoint),
        object_store.bucket,
        retry=RetryPolicy(max_attempts=4, backoff_s=0.01, backoff_max_s=0.05),
        read_timeout_s=0.5,
    )
    s3_proxy.inject(fault, times=2)
    key = output_key("job1", 1, "job1_0.png")

    flaky.put_bytes(key, b"finally", "image/png")

    assert object_store.get_bytes(key) == b"finally"
    assert s3_proxy.connections == 3
    assert [(r.levelname, r.operation, r.key, r.attempt) for r in retry_log()] == [  # type: ignore[attr-defined]
        ("WARNING", "put", key, 1),
        ("WARNING", "put", key, 2),
    ]
    assert s3_credentials.secret_key not in " ".join(r.getMessage() for r in retry_log())


@pytest.mark.parametrize("operation", ["get_stream", "stat", "delete", "delete_prefix", "ensure_bucket"])
def test_every_operation_retries_a_reset_connection(
    s3_proxy: FaultyProxy, s3_credentials: S3Credentials, object_store: S3ObjectStore, operation: str
) -> None:
    object_store.put_bytes("outputs/j/1/a.png", b"x", "image/png")
    flaky = make_store(replace(s3_credentials, endpoint=s3_proxy.endpoint), object_store.bucket)
    s3_proxy.inject("reset")

    if operation == "get_stream":
        with flaky.get_stream("outputs/j/1/a.png") as stream:
            assert b"".join(stream) == b"x"
    elif operation == "stat":
        assert flaky.stat("outputs/j/1/a.png").size == 1
    elif operation == "delete":
        flaky.delete("outputs/j/1/a.png")
        assert not object_store.exists("outputs/j/1/a.png")
    elif operation == "delete_prefix":
        assert flaky.delete_prefix("outputs/j/1/") == 1
    else:
        flaky.ensure_bucket()
    assert s3_proxy.connections == 2


def test_exhausted_retries_raise_storage_error(
    s3_proxy: FaultyProxy, s3_credentials: S3Credentials, object_store: S3ObjectStore
) -> None:
    flaky = make_store(replace(s3_credentials, endpoint=s3_proxy.endpoint), object_store.bucket)
    s3_proxy.inject("reset", times=100)

    with pytest.raises(StorageError, match=r"put 'a\.png' failed after 3 attempts"):
        flaky.put_bytes("a.png", b"x", "image/png")
    assert s3_proxy.connections == 3
    assert not object_store.exists("a.png")


def test_a_body_cut_short_is_retried_whole_by_get_bytes(
    s3_proxy: FaultyProxy, s3_credentials: S3Credentials, object_store: S3ObjectStore
) -> None:
    data = os.urandom(4 * FaultyProxy.CUT_AFTER_BYTES)
    object_store.put_bytes("big.bin", data, "application/octet-stream")
    flaky = make_store(replace(s3_credentials, endpoint=s3_proxy.endpoint), object_store.bucket)
    s3_proxy.inject("cut")

    assert flaky.get_bytes("big.bin") == data
    assert s3_proxy.connections == 2


def test_a_stream_cut_short_raises_storage_error(
    s3_proxy: FaultyProxy, s3_credentials: S3Credentials, object_store: S3ObjectStore
) -> None:
    object_store.put_bytes("big.bin", os.urandom(4 * FaultyProxy.CUT_AFTER_BYTES), "application/octet-stream")
    flaky = make_store(replace(s3_credentials, endpoint=s3_proxy.endpoint), object_store.bucket)
    s3_proxy.inject("cut")

    with flaky.get_stream("big.bin") as stream, pytest.raises(StorageError, match="broke off mid-body"):
        for _ in stream:
            pass


def test_processes_racing_to_create_the_bucket_all_succeed(
    s3_credentials: S3Credentials, bucket_name: str
) -> None:
    stores = [make_store(s3_credentials, bucket_name) for _ in range(8)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def create(store: S3ObjectStore) -> None:
        start.wait()
        try:
            store.ensure_bucket()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=create, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    stores[0].put_bytes("a.png", b"x", "image/png")
    assert stores[-1].get_bytes("a.png") == b"x"


def test_a_presigned_url_past_its_expiry_is_refused(object_store: S3ObjectStore) -> None:
    object_store.put_bytes("a.png", b"x", "image/png")
    url = object_store.presign_get("a.png", 1)
    time.sleep(2.1)  # SigV4 expiry has one-second resolution, so only a real wait can pass it

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    refused.value.close()  # the error holds the response and its socket
    assert refused.value.code == 403

"""The object store: one small ``ObjectStore`` interface, its S3/MinIO adapter and an in-memory fake.

Every byte of image data lives in one bucket (DESIGN.md, "Object store layout"). Keys are built
only by the helpers here, so the layout is written down once::

    inputs/<job>/<field>.png             uploaded sources and masks     (input_key)
    outputs/<job>/<attempt>/<file>       images, thumbnails, sidecars   (output_key, output_prefix)
    models/<name>/<content hash>/<path>  published models' files       (model_key, model_prefix)

Outputs are scoped by attempt: a re-run writes under its own prefix and never overwrites the
objects a committed attempt recorded. Postgres is the commit point and the job row lists the live
keys; nobody lists the bucket to find outputs (spec/reliability.md section 2).

Keys are literal S3 strings, never paths. They are still checked (``check_key``) so that no caller
can build a key that would look like a traversal (``..`` segments, a leading ``/``, control
characters) or exceed S3's 1024-byte limit; a bad key raises ``ValueError`` before any network call.

Errors: a missing object raises ``service.errors.NotFound``. Anything else the store does not do
raises ``service.errors.StorageError``: at once when the store refused the request (credentials,
permissions, a missing bucket), after ``RetryPolicy.max_attempts`` tries when the failure looked
transient (connection reset, timeout, 5xx, ``SlowDown``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from service.breaker import Breaker
from service.errors import ConfigError, NotFound, StorageError
from service.retries import retry_outcome

if TYPE_CHECKING:
    from service.config import Config

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024  # S3's own limit on a key's UTF-8 length
#: The longest name of an uploaded input: room for ``mask:<stage>`` (stage names have at most 64
#: characters), and with ``inputs/<job name>/`` and ``.png`` still far within MAX_KEY_BYTES.
MAX_INPUT_NAME_BYTES = 512
MAX_METADATA_BYTES = 2048  # S3's limit on all user metadata of one object
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
CHUNK_BYTES = 64 * 1024
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_S = 0.2
DEFAULT_BACKOFF_MAX_S = 5.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# minio sends anything larger than one part as a multipart upload; raising the part size to the
# object's size keeps every put a single PUT, which S3 applies atomically (no partial objects).
MIN_PART_BYTES = 5 * 1024 * 1024
#: Parts of a file upload (``put_file``): 64 MiB keeps a 3.4 GB UNet within S3's 10,000 parts.
FILE_PART_BYTES = 64 * 1024 * 1024

#: S3 error codes that mean "try again later", whatever the HTTP status.
TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
#: HTTP statuses worth another try; 501 (not implemented) and other 4xx never get better.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Failures of the connection itself (reset, refused, timed out, body cut short).
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.IncompleteRead,
    ConnectionError,
    TimeoutError,
)
#: Everything the minio client raises for a request that did not work.
CLIENT_ERRORS: tuple[type[Exception], ...] = (MinioException, urllib3.exceptions.HTTPError, *TRANSPORT_ERRORS)

T = TypeVar("T")


# --- keys ------------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``ValueError`` saying why."""
    if not key:
        raise ValueError("an object key must not be empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"an object key must be at most {MAX_KEY_BYTES} bytes")
    if _has_control(key):
        raise ValueError(f"object key {key!r} contains a control character")
    if "\\" in key:
        # A backslash is a separator on Windows disks; keys must not look like paths anywhere.
        raise ValueError(f"object key {key!r} contains a backslash")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} must not start with '/'")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


def check_input_name(field: str) -> str:
    """Return ``field`` if ``input_key`` takes it whatever the job's name, else raise ``ValueError``
    giving the rule (not the name, which may be long: the caller shows it cut short)."""
    if (
        not 0 < len(field.encode("utf-8")) <= MAX_INPUT_NAME_BYTES
        or field in (".", "..")
        or "/" in field
        or "\\" in field
        or _has_control(field)
    ):
        raise ValueError(
            f"an upload's name must be 1 to {MAX_INPUT_NAME_BYTES} bytes of UTF-8 without '/', '\\' or "
            "control characters, and not '.' or '..'"
        )
    return field


def _has_control(text: str) -> bool:
    """Whether ``text`` holds a C0 or C1 control character (or DEL), which no key may hold."""
    return any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text)


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe key prefix ending in ``/``, else raise ``ValueError``.

    The trailing slash is required so that ``outputs/job/1/`` can never also match
    ``outputs/job/10/...``.
    """
    if not prefix.endswith("/"):
        raise ValueError(f"a key prefix must end with '/', got {prefix!r}")
    check_key(prefix[:-1])
    return prefix


def _segment(value: str, what: str) -> str:
    """One path segment of a key: non-empty and without ``/`` (the rest is ``check_key``'s job)."""
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{what} must be a non-empty name without '/', got {value!r}")
    return value


def input_key(job_name: str, field: str) -> str:
    """The key of an uploaded input image (``source``, ``mask``, ...) of a job."""
    return check_key(f"inputs/{_segment(job_name, 'job name')}/{check_input_name(field)}.png")


#: The file name of an attempt's live preview (never one of its outputs' names, which end ``_<i>.<ext>``).
PREVIEW_FILE = "preview.jpg"


def output_prefix(job_name: str, attempt: int) -> str:
    """The prefix holding everything one attempt of a job uploaded (what ``delete_prefix`` drops)."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be a non-negative integer, got {attempt!r}")
    return check_prefix(f"outputs/{_segment(job_name, 'job name')}/{attempt}/")


def output_key(job_name: str, attempt: int, file_name: str) -> str:
    """The key of one output file (image, thumbnail or ``.json`` sidecar) of one attempt of a job."""
    return check_key(output_prefix(job_name, attempt) + _segment(file_name, "file name"))


def preview_key(job_name: str, attempt: int) -> str:
    """The live preview of a running attempt: under its prefix, so a crashed attempt's is collected
    with its other objects (``service.gc``) and a fenced one's is dropped with them."""
    return check_key(output_prefix(job_name, attempt) + PREVIEW_FILE)


def model_prefix(name: str, content_hash: str) -> str:
    """The prefix holding every file of one published version of a model (``service.modelstore``)."""
    return check_prefix(f"models/{_segment(name, 'model name')}/{_segment(content_hash, 'content hash')}/")


def model_key(name: str, content_hash: str, path: str) -> str:
    """The key of one file of a published model; ``path`` is relative to the models folder."""
    return check_key(model_prefix(name, content_hash) + path)


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return user metadata that both backends store alike, else raise ``ValueError``.

    Names are lowercase ``[a-z0-9-]`` (S3 servers differ in how they case them) and values are
    printable ASCII, because both travel as HTTP headers.
    """
    checked = dict(metadata or {})
    for name, value in checked.items():
        if not name or not all(
            char.isascii() and (char.islower() or char.isdigit() or char == "-") for char in name
        ):
            raise ValueError(f"metadata name {name!r} must be lowercase letters, digits and '-'")
        if not all(0x20 <= ord(char) < 0x7F for char in value):
            raise ValueError(f"metadata {name!r} must be printable ASCII")
    if sum(len(name) + len(value) for name, value in checked.items()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes in all")
    return checked


def _check_expiry(expires_s: int) -> timedelta:
    if not 1 <= expires_s <= MAX_PRESIGN_S:
        raise ValueError(f"a presigned URL must expire in 1 to {MAX_PRESIGN_S} seconds, got {expires_s}")
    return timedelta(seconds=expires_s)


# --- the interface ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    content_type: str
    #: The object's ETag without quotes (the MD5 of its bytes: every put is a single PUT).
    etag: str
    #: User metadata, with the names as given to ``put_bytes`` (lowercase).
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectStream:
    """An object being read: its ``info`` and its bytes as an iterator of chunks.

    The caller must release it, by one of: iterating to the end, calling ``close()``, using it as
    a context manager, or handing it to Falcon as ``resp.stream`` (the WSGI server calls
    ``close()`` when the response is done). A stream that is never released keeps its HTTP
    connection out of the pool until it is garbage-collected.

    Bytes are never all held in memory. A connection failure in the middle of the body raises
    ``StorageError`` and is not retried here: part of the object has already been handed out, so
    only the caller can start again.
    """

    def __init__(self, info: ObjectInfo, chunks: Iterator[bytes], release: Callable[[bool], None]) -> None:
        self.info = info
        self._chunks = chunks
        self._release: Callable[[bool], None] | None = release

    @property
    def size(self) -> int:
        """The object's length in bytes."""
        return self.info.size

    @property
    def content_type(self) -> str:
        """The object's content type."""
        return self.info.content_type

    @property
    def etag(self) -> str:
        """The object's ETag without quotes."""
        return self.info.etag

    def __iter__(self) -> Iterator[bytes]:
        if self._release is None:
            return
        try:
            yield from self._chunks
        except TRANSPORT_ERRORS as err:
            self._finish(complete=False)
            raise StorageError(f"s3 get {self.info.key!r} broke off mid-body: {_describe(err)}") from err
        self._finish(complete=True)

    def close(self) -> None:
        """Release the connection, dropping whatever has not been read; safe to call twice."""
        self._finish(complete=False)

    def _finish(self, *, complete: bool) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(complete)

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ObjectStore(Protocol):
    """Where image bytes live; ``S3ObjectStore`` in every process, ``MemoryObjectStore`` in unit tests."""

    #: The one bucket every key lives in.
    bucket: str

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; safe to call from many processes at once."""

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store ``data`` under ``key`` (replacing any object there) and return its ETag."""

    def put_file(
        self, key: str, path: Path, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store the file at ``path`` under ``key`` without reading it all into memory; its ETag."""

    def get_bytes(self, key: str) -> bytes:
        """Read a small object (an uploaded input) whole."""

    def get_stream(self, key: str) -> ObjectStream:
        """Open an object for reading in chunks; the caller must release the stream (see ``ObjectStream``)."""

    def stat(self, key: str) -> ObjectInfo:
        """Describe an object without reading it."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing one is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (which ends in ``/``) and return how many there were."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (which ends in ``/``), in key order."""

    def list_written(self, prefix: str) -> dict[str, datetime]:
        """Every key under ``prefix`` (which ends in ``/``) with when its object was last written,
        by the store's clock (timezone-aware)."""

    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL that lets anyone holding it GET this one object for ``expires_s`` seconds."""


# --- S3 / MinIO ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    #: Tries in all, the first included.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Scale of the exponential backoff; each wait is uniform in [0, backoff_s * 2**n] ("full jitter").
    backoff_s: float = DEFAULT_BACKOFF_S
    #: Cap on one wait.
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff times must not be negative")


def is_transient(err: BaseException) -> bool:
    """Whether a failed request is worth another try (overload, 5xx, a broken connection)."""
    if isinstance(err, S3Error):
        return err.code in TRANSIENT_CODES or err.response.status in TRANSIENT_STATUSES
    if isinstance(err, ServerError):
        return err.status_code in TRANSIENT_STATUSES
    if isinstance(err, InvalidResponseError):
        # A non-XML error page, e.g. a 502 from a load balancer in front of MinIO. minio keeps
        # the status only in this private attribute.
        return err._code in TRANSIENT_STATUSES
    return isinstance(err, TRANSPORT_ERRORS)


def _describe(err: BaseException) -> str:
    """A short account of a client error; never includes credentials (they travel in headers)."""
    if isinstance(err, S3Error):
        return f"{err.code}: {err.message}"
    return f"{type(err).__name__}: {err}"


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """Split ``host:port`` or ``http(s)://host:port`` into minio's ``(host:port, secure)``."""
    if "://" not in endpoint:
        if not endpoint or "/" in endpoint:
            raise ConfigError(f"S3 endpoint must be host:port or http(s)://host:port, got {endpoint!r}")
        return endpoint, False
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise ConfigError(f"S3 endpoint must be host:port or http(s)://host:port, got {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


class S3ObjectStore:
    """``ObjectStore`` on an S3 server (MinIO in production, SeaweedFS locally) through ``minio``."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        retry: RetryPolicy = RetryPolicy(),
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        breaker: Breaker | None = None,
    ) -> None:
        self.bucket = bucket
        self.retry = retry
        #: Set (the api's): once a call found S3 not answering, the next ones fail at once for a while.
        self.breaker = breaker
        #: A failed call that took this long waited out a timeout: S3 did not answer. One refused
        #: at once (S3 restarting) trips nothing: failing fast would only outlast its return.
        self._slow_s = connect_timeout_s
        # Our own pool with urllib3's retries off: tenacity is the one retry loop, so attempts,
        # backoff and logging are ours, and refused requests are not silently retried.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        # A fixed region spares a GetBucketLocation call before the first request (and presigning).
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; several processes starting at once all succeed."""
        self._run("ensure_bucket", self.bucket, self._create_bucket)

    def _create_bucket(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as err:
            # Another process won the race between our check and our create.
            if err.code == "BucketAlreadyOwnedByYou":
                return
            # Some servers say this for a bucket we own too; only a second look can tell.
            if err.code == "BucketAlreadyExists" and self._client.bucket_exists(self.bucket):
                return
            raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store ``data`` under ``key`` in one PUT (atomic for readers) and return its ETag."""
        check_key(key)
        headers = {f"x-amz-meta-{name}": value for name, value in check_metadata(metadata).items()}

        def put() -> str:
            result = self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata=headers,  # type: ignore[arg-type]
                part_size=max(len(data), MIN_PART_BYTES),
            )
            return str(result.etag).strip('"')

        return self._run("put", key, put)

    def put_file(
        self, key: str, path: Path, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Upload a file (a model's weights: gigabytes) in parts; readers see the object only once
        the upload completes, and a retry uploads it again from the start."""
        check_key(key)
        headers = {f"x-amz-meta-{name}": value for name, value in check_metadata(metadata).items()}

        def put() -> str:
            result = self._client.fput_object(
                self.bucket,
                key,
                str(path),
                content_type=content_type,
                metadata=headers,  # type: ignore[arg-type]
                part_size=FILE_PART_BYTES,
            )
            return str(result.etag).strip('"')

        return self._run("put", key, put)

    def get_bytes(self, key: str) -> bytes:
        """Read an object whole; a connection lost mid-body is retried like any transient failure."""
        check_key(key)

        def get() -> bytes:
            response = self._client.get_object(self.bucket, key)
            complete = False
            try:
                data = response.read()
                complete = True
                return data
            finally:
                _release(response, complete=complete)

        return self._run("get", key, get)

    def get_stream(self, key: str) -> ObjectStream:
        """Open an object for chunked reading; opening is retried, the body is not (see ``ObjectStream``)."""
        check_key(key)
        response = self._run("get", key, lambda: self._client.get_object(self.bucket, key))
        headers = response.headers
        info = ObjectInfo(
            key=key,
            size=int(headers.get("content-length", "0")),
            content_type=headers.get("content-type", "application/octet-stream"),
            etag=headers.get("etag", "").strip('"'),
            metadata=_user_metadata(headers),
        )
        return ObjectStream(
            info, response.stream(CHUNK_BYTES), lambda complete: _release(response, complete=complete)
        )

    def stat(self, key: str) -> ObjectInfo:
        """Describe an object (a HEAD request)."""
        check_key(key)
        found = self._run("stat", key, lambda: self._client.stat_object(self.bucket, key))
        return ObjectInfo(
            key=key,
            size=int(found.size or 0),
            content_type=found.content_type or "application/octet-stream",
            etag=(found.etag or "").strip('"'),
            metadata=_user_metadata(found.metadata or {}),
        )

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Delete an object; S3 answers 204 for a missing one too."""
        check_key(key)
        self._run("delete", key, lambda: self._client.remove_object(self.bucket, key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; a retry after a partial delete finishes the job."""
        check_prefix(prefix)

        def delete_all() -> int:
            names = [
                str(found.object_name)
                for found in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]
            # remove_objects is lazy: the requests run while its errors are read.
            failures = list(self._client.remove_objects(self.bucket, (DeleteObject(name) for name in names)))
            if failures:
                first = failures[0]
                raise StorageError(
                    f"s3 delete_prefix {prefix!r}: {len(failures)} not deleted, "
                    f"e.g. {first.name}: {first.code}"
                )
            return len(names)

        return self._run("delete_prefix", prefix, delete_all)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, in key order (a retry lists again from the start)."""
        check_prefix(prefix)

        def list_all() -> list[str]:
            found = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(str(item.object_name) for item in found)

        return self._run("list_keys", prefix, list_all)

    def list_written(self, prefix: str) -> dict[str, datetime]:
        """Every key under ``prefix`` with its ``LastModified`` (a retry lists again from the start)."""
        check_prefix(prefix)

        def list_all() -> dict[str, datetime]:
            found = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return {str(item.object_name): _aware(item.last_modified) for item in found}

        return self._run("list_written", prefix, list_all)

    def presign_get(self, key: str, expires_s: int) -> str:
        """A presigned GET URL for ``key``, computed locally (no request: the region is fixed)."""
        check_key(key)
        return self._client.presigned_get_object(self.bucket, key, expires=_check_expiry(expires_s))

    def _run(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """Run one store call, retrying transient failures and translating the rest to our errors."""
        if self.breaker is not None and not self.breaker.admit():
            raise StorageError(f"s3 {operation} {key!r} not tried: the store did not answer a moment ago")
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=wait_random_exponential(multiplier=self.retry.backoff_s, max=self.retry.backoff_max_s),
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: _log_retry(operation, key, self.retry.max_attempts, state),
            reraise=True,
        )
        started = time.monotonic()
        try:
            result = retrying(call)
        except S3Error as err:
            # S3 answered, if only with an error: it is there.
            if self.breaker is not None:
                self.breaker.succeeded()
            if err.code == "NoSuchKey":
                raise NotFound(f"object {key!r} not found") from err
            raise self._storage_error(operation, key, err) from err
        except CLIENT_ERRORS as err:
            slow = time.monotonic() - started >= self._slow_s
            if self.breaker is not None and is_transient(err) and (slow or self.breaker.open):
                self.breaker.failed()
            raise self._storage_error(operation, key, err) from err
        if self.breaker is not None:
            self.breaker.succeeded()
        return result

    def _storage_error(self, operation: str, key: str, err: Exception) -> StorageError:
        if is_transient(err):
            return StorageError(
                f"s3 {operation} {key!r} failed after {self.retry.max_attempts} attempts: {_describe(err)}"
            )
        return StorageError(f"s3 {operation} {key!r} was refused: {_describe(err)}")


def _log_retry(operation: str, key: str, max_attempts: int, state: RetryCallState) -> None:
    """Log one retry at WARNING: the operation, the key and the error, never the credentials."""
    err, wait_s = retry_outcome(state)
    log.warning(
        "s3 %s %r failed (attempt %d of %d), retrying in %.2fs: %s",
        operation,
        key,
        state.attempt_number,
        max_attempts,
        wait_s,
        _describe(err) if err else "?",
        extra={"action": "s3_retry", "operation": operation, "key": key, "attempt": state.attempt_number},
    )


def _release(response: urllib3.BaseHTTPResponse, *, complete: bool) -> None:
    """Give a response's connection back: to the pool if its body was read, else closed.

    A half-read connection must not be reused: the next request would read the rest of this body.
    """
    if not complete:
        response.close()
    response.release_conn()


def _aware(written: datetime | None) -> datetime:
    """A listing's ``LastModified`` as an aware time; S3 always sends one, so a missing one (a
    server that does not) reads as now, which no age check ever finds old."""
    if written is None:
        return datetime.now(UTC)
    return written if written.tzinfo is not None else written.replace(tzinfo=UTC)


def _user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers of a response, named as they were given (lowercase)."""
    prefix = "x-amz-meta-"
    return {
        name[len(prefix) :].lower(): value
        for name, value in headers.items()
        if name.lower().startswith(prefix)
    }


@dataclass(frozen=True)
class Patience:
    """How long a process waits on S3: its retries and its socket timeouts."""

    retry: RetryPolicy
    connect_timeout_s: float
    read_timeout_s: float
    #: Set: after a call found S3 not answering, calls fail at once this long (``Breaker``).
    outage_cooldown_s: float | None = None


#: Workers are patient: a job's outputs are worth a minute of retries.
WORKER_PATIENCE = Patience(RetryPolicy(), CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
#: The api has a person waiting: it fails fast with a 503 they may retry, and never holds a
#: request thread for minutes while S3 is away.
API_PATIENCE = Patience(RetryPolicy(max_attempts=2, backoff_s=0.1, backoff_max_s=0.5), 2.0, 10.0, 5.0)


def from_config(config: Config, *, patience: Patience = WORKER_PATIENCE) -> S3ObjectStore:
    """The store a process uses, from ``s3_endpoint`` (``host:port`` or a URL), keys, bucket and region."""
    endpoint, secure = parse_endpoint(config.s3_endpoint)
    return S3ObjectStore(
        endpoint,
        config.s3_access_key,
        config.s3_secret_key,
        config.s3_bucket,
        secure=secure,
        region=config.s3_region,
        retry=patience.retry,
        connect_timeout_s=patience.connect_timeout_s,
        read_timeout_s=patience.read_timeout_s,
        breaker=None
        if patience.outage_cooldown_s is None
        else Breaker(
            patience.outage_cooldown_s,
            # One probing call may take every attempt's timeouts.
            probe_s=patience.retry.max_attempts * (patience.connect_timeout_s + patience.read_timeout_s),
        ),
    )


# --- in memory, for unit tests ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    data: bytes
    info: ObjectInfo
    written: datetime


class MemoryObjectStore:
    """``ObjectStore`` in a dict, ONLY for unit tests of the code above storage (resources, worker).

    It checks keys and metadata and raises ``NotFound`` exactly like ``S3ObjectStore`` (the
    contract suite in ``tests/integration/test_storage.py`` holds both to that), but it never
    fails transiently, has no bucket to create, and its presigned URLs (``memory://...``) cannot
    be fetched. Never use it in a process: other processes cannot see its objects.
    """

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self._objects: dict[str, _Stored] = {}
        self._lock = threading.Lock()

    def ensure_bucket(self) -> None:
        """Nothing to create: the dict is the bucket."""

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store a copy of ``data`` and return its ETag (the MD5, as S3 gives for a single PUT)."""
        check_key(key)
        data = bytes(data)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        # A read-only view, since every stat() hands out this same ObjectInfo.
        info = ObjectInfo(key, len(data), content_type, etag, MappingProxyType(check_metadata(metadata)))
        with self._lock:
            self._objects[key] = _Stored(data, info, datetime.now(UTC))
        return etag

    def put_file(
        self, key: str, path: Path, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store a copy of the file's bytes."""
        return self.put_bytes(key, path.read_bytes(), content_type, metadata)

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes."""
        return self._get(key).data

    def get_stream(self, key: str) -> ObjectStream:
        """The object in ``CHUNK_BYTES`` chunks, sliced lazily as S3 would send them."""
        stored = self._get(key)
        chunks = (
            stored.data[start : start + CHUNK_BYTES] for start in range(0, len(stored.data), CHUNK_BYTES)
        )
        return ObjectStream(stored.info, chunks, lambda complete: None)

    def stat(self, key: str) -> ObjectInfo:
        """The object's description."""
        return self._get(key).info

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        check_key(key)
        with self._lock:
            return key in self._objects

    def delete(self, key: str) -> None:
        """Delete an object; a missing one is fine."""
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, in key order."""
        check_prefix(prefix)
        with self._lock:
            return sorted(key for key in self._objects if key.startswith(prefix))

    def list_written(self, prefix: str) -> dict[str, datetime]:
        """Every key under ``prefix`` with when it was put."""
        check_prefix(prefix)
        with self._lock:
            return {key: stored.written for key, stored in self._objects.items() if key.startswith(prefix)}

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``."""
        check_prefix(prefix)
        with self._lock:
            doomed = [key for key in self._objects if key.startswith(prefix)]
            for key in doomed:
                del self._objects[key]
        return len(doomed)

    def presign_get(self, key: str, expires_s: int) -> str:
        """A ``memory://`` URL naming the key, for asserting on redirects; nothing can fetch it."""
        check_key(key)
        _check_expiry(expires_s)
        return f"memory://{self.bucket}/{quote(key)}?expires={expires_s}"

    def _get(self, key: str) -> _Stored:
        check_key(key)
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise NotFound(f"object {key!r} not found")
        return stored

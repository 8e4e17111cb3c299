"""Where a conversion job's weights come from: parse a model entry's ``source``, fetch it, vet it.

An extras entry's ``source`` names the weights a conversion job turns into ONNX files. The API calls
:func:`parse_source` when a job is submitted (no I/O: a bad source is a 400 before anything is
queued); the worker calls :func:`fetch_source`, which returns a local file or folder, then
:func:`require_loadable` before anything unpickles it. Every failure is a :class:`SourceError` whose
``code`` becomes the job's failure reason.

Schemes:

- **local** (a path, or ``file://``): relative paths resolve against ``SourceSettings.import_root``;
  the real path (symlinks followed) must lie inside it, and so must every link inside a folder;
  without an import root local sources are refused. The file or folder is returned in place,
  never copied.
- **http / https**: downloaded below ``<cache>/downloads`` with urllib3, through a ``.part`` file
  that a later attempt resumes with an HTTP Range request. Connection errors, read timeouts and 5xx
  answers are retried (3 attempts, short exponential backoff); the size limit is enforced from
  Content-Length before the body is read and again while streaming; the sha256 is computed while
  streaming. A finished download leaves a ``.done`` marker (its name, size and sha256), so a later
  fetch of the same URL reuses it without touching the network. Every connection, redirects
  included, goes to an address checked by ``service.fetch`` (never to the name again: no DNS
  rebinding): a link-local one (the cloud metadata service) is always refused, and a private,
  loopback or otherwise non-public one unless the URL's own host is one (an internal mirror named
  on purpose), so a public server can never redirect a download into the cluster's network.
- **hub** (``huggingface://org/repo[@revision]``, or a bare ``org/repo``): a snapshot of configs,
  tokenizers and safetensors/ONNX weights through ``huggingface_hub.snapshot_download`` below
  ``<cache>/hub``. Pickle weights are only fetched when pickles are allowed (a repository holding
  nothing but pickle weights is then refused as ``pickle_refused``). The total size is
  checked against the limit from the hub's file listing before any file is downloaded; when that
  listing cannot be had (offline mode, network down) only an already cached snapshot is used, so an
  unchecked download never happens. huggingface_hub is imported only here: the API image, which
  calls :func:`parse_source`, does not install it.
- **civitai** (``civitai://<model version id>``): ``<civitai_root>/<id>`` (with ``?token=`` when a
  token is configured), downloaded as http; the file name comes from Content-Disposition.

Telling a bare hub id from a relative local path, without I/O: a source without a scheme is a
**local path** when it starts with ``/`` or ``.`` (``./loras/x``), when its last part ends with a
known weight or archive extension (:data:`LOCAL_EXTENSIONS`: ``loras/x.safetensors``), or when it is
not of the form ``org/repo`` (no slash, or several). Everything else, exactly one slash and a last
part without such an extension (``runwayml/stable-diffusion-v1-5``), is a **hub id**. A local
folder named like ``org/repo`` is written ``./org/repo``.

Safety rules: sources are at most 2048 characters, free of control characters, without ``..``
components and without credentials in URLs; messages and logs never carry a URL's query string
(it may hold a token) nor a token; pickle files (which run code when loaded) are refused unless the
worker allows them.
"""

from __future__ import annotations

import email.message
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import socket
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import tenacity
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from service.fetch import (
    SourceURLBlocked,
    SourceURLError,
    SourceURLTimeout,
    blocked_reason,
    checked_addresses,
    connect_checked,
    ip_literal,
)

logger = logging.getLogger(__name__)

SourceErrorCode = Literal[
    "source_missing", "bad_source", "download_failed", "hash_mismatch", "too_large", "pickle_refused"
]
Progress = Callable[[int, int], None]
"""``progress(bytes done, bytes in all)``; the total is 0 when unknown."""

MAX_SOURCE_LENGTH = 2048
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
HUB_REVISION_RE = re.compile(r"^[\w./-]{1,128}$")
CIVITAI_ID_RE = re.compile(r"^[0-9]{1,20}$")
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: A last path part ending with one of these makes a scheme-less source a local path.
LOCAL_EXTENSIONS = (
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".onnx",
    ".pb",
    ".zip",
    ".pkl",
    ".gguf",
)
#: Pickle weights: refused in folders unless allowed, and only fetched from the hub when allowed.
PICKLE_PATTERNS = ("*.bin", "*.ckpt", "*.pt", "*.pth")
#: What a hub snapshot holds: configs, tokenizers, safetensors and ONNX weights with their external data.
HUB_PATTERNS = (
    "*.json",
    "*.txt",
    "*.yaml",
    "*.safetensors",
    "*.onnx",
    "*.onnx_data",
    "*.onnx.data",
    "*.pb",
    "*.model",
)
#: A hub snapshot without any of these, but with pickle weights, is refused unless pickles are allowed.
SAFE_WEIGHT_SUFFIXES = (".safetensors", ".onnx")

DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_BACKOFF_S = 0.25
DOWNLOAD_CHUNK_BYTES = 1 << 20
#: A download connection's time limit when urllib3 gives none.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
MAX_REDIRECTS = 10
PROGRESS_INTERVAL_S = 0.1
HASH_BLOCK_BYTES = 1 << 20
HUB_MAX_WORKERS = 4
USER_AGENT = "onnx-web-cluster"
ALLOW_PICKLE_HINT = (
    "pickle files can run arbitrary code when they are loaded; if you trust this source, allow pickles "
    "with ONNX_WEB_ALLOW_PICKLE=1 on the worker or `onnx-web convert --allow-pickle`"
)


class SourceError(Exception):
    """A source that cannot be used; a conversion job fails with reason = ``err.code``."""

    def __init__(self, code: SourceErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: SourceErrorCode = code
        self.message = message


@dataclass(frozen=True)
class SourceSettings:
    """Where fetched sources land and what fetching may do."""

    cache: Path
    import_root: Path | None
    max_bytes: int
    allow_pickle: bool = False
    hf_token: str | None = None
    hf_endpoint: str | None = None
    civitai_token: str | None = None
    civitai_root: str = "https://civitai.com/api/download/models"
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ParsedSource:
    """A validated source: its scheme and normalized location."""

    scheme: Literal["local", "http", "hub", "civitai"]
    location: str
    revision: str | None = None


def _no_progress(done: int, total: int) -> None:
    """Progress callback that ignores progress."""


def _no_check() -> None:
    """Cancellation check that never cancels."""


# --- parsing -----------------------------------------------------------------------------------


def parse_source(source: str) -> ParsedSource:
    """Validate ``source`` and tell its scheme, without any I/O; raises ``SourceError("bad_source")``."""
    if not source.strip():
        raise SourceError("bad_source", "source is empty")
    if len(source) > MAX_SOURCE_LENGTH:
        raise SourceError("bad_source", f"source is longer than {MAX_SOURCE_LENGTH} characters")
    if any(unicodedata.category(char) == "Cc" for char in source):
        raise SourceError("bad_source", "source contains control characters")
    if source != source.strip():
        raise SourceError("bad_source", "source has leading or trailing whitespace")
    match = SCHEME_RE.match(source)
    if match is None:
        return _parse_bare(source)
    scheme = match.group(1).lower()
    rest = source[match.end() :]
    if scheme in ("http", "https"):
        return _parse_http(source)
    if scheme == "file":
        return _parse_file_url(source)
    if scheme == "huggingface":
        return _parse_hub(rest)
    if scheme == "civitai":
        if not CIVITAI_ID_RE.match(rest):
            raise SourceError("bad_source", "civitai:// must be followed by a model version id (digits only)")
        return ParsedSource("civitai", rest)
    raise SourceError(
        "bad_source",
        f"unknown source scheme {scheme!r}: use http(s)://, huggingface://, civitai:// or a path",
    )


def _parse_bare(source: str) -> ParsedSource:
    """A scheme-less source: a hub id ``org/repo`` or a local path (the rule is in the module docstring)."""
    last = source.rsplit("/", 1)[-1]
    is_local = (
        source.startswith(("/", ".")) or last.lower().endswith(LOCAL_EXTENSIONS) or source.count("/") != 1
    )
    if is_local:
        return _local(source)
    if not HUB_ID_RE.match(source):
        raise SourceError(
            "bad_source",
            "a source of the form org/repo is a Hugging Face repository id and must match "
            f"{HUB_ID_RE.pattern}; write a local folder as ./org/repo",
        )
    return ParsedSource("hub", source)


def _local(path: str) -> ParsedSource:
    """A local path, refused when it has ``..`` components."""
    if ".." in re.split(r"[/\\]", path):
        raise SourceError("bad_source", "local paths must not contain '..' components")
    return ParsedSource("local", path)


def _parse_file_url(source: str) -> ParsedSource:
    """``file:///abs/path`` or ``file://localhost/abs/path``."""
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise SourceError("bad_source", "file:// URLs must name a local path (file:///path)")
    path = unquote(parts.path)
    if not path:
        raise SourceError("bad_source", "file:// URL without a path")
    return _local(path)


def _parse_http(source: str) -> ParsedSource:
    """An http(s) URL with a host and without credentials; the fragment is dropped."""
    parts = urlsplit(source)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SourceError("bad_source", "URLs must not carry credentials (user:password@host)")
    if not parts.hostname:
        raise SourceError("bad_source", "URL has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
        literal = ip_literal(parts.hostname)
    except ValueError as err:  # SourceURLBlocked, for an IP address that does not parse, is one
        raise SourceError("bad_source", f"URL has an invalid port or address: {err}") from err
    reason = blocked_reason(literal, allow_private=True) if literal is not None else None
    if reason:
        raise SourceError(
            "bad_source", f"URL names a link-local address, {reason}: no model server lives there"
        )
    return ParsedSource("http", urlunsplit((parts.scheme.lower(), parts.netloc, parts.path, parts.query, "")))


def _parse_hub(rest: str) -> ParsedSource:
    """``org/repo[@revision]`` after ``huggingface://``."""
    repo, at, revision = rest.partition("@")
    if not HUB_ID_RE.match(repo):
        raise SourceError("bad_source", f"Hugging Face repository ids must match {HUB_ID_RE.pattern}")
    if at and not HUB_REVISION_RE.match(revision):
        raise SourceError("bad_source", f"Hugging Face revisions must match {HUB_REVISION_RE.pattern}")
    return ParsedSource("hub", repo, revision if at else None)


# --- fetching ----------------------------------------------------------------------------------


def fetch_source(
    source: str,
    settings: SourceSettings,
    *,
    sha256: str | None = None,
    filename: str | None = None,
    progress: Progress = _no_progress,
    check: Callable[[], None] = _no_check,
) -> Path:
    """Turn ``source`` into a local file or folder (see the module docstring for each scheme).

    ``sha256`` is checked for files (not for folders or hub snapshots); ``filename`` names a
    download; ``check()`` is called between chunks and raises to cancel (the exception propagates,
    a partial download is kept for a later resume).
    """
    parsed = parse_source(source)
    expected = sha256.lower() if sha256 else None
    if parsed.scheme == "local":
        path = _fetch_local(parsed.location, settings)
        if expected is not None and path.is_file():
            actual = _hash_file(path, hashlib.sha256()).hexdigest()
            if actual != expected:
                raise SourceError("hash_mismatch", f"{path.name} has sha256 {actual}, expected {expected}")
        elif expected is not None:
            logger.warning("sha256 ignored for a folder", extra={"source_scheme": "local", "path": str(path)})
        return path
    if parsed.scheme == "hub":
        if expected is not None:
            logger.warning("sha256 ignored for a hub snapshot", extra={"source_scheme": "hub"})
        return _fetch_hub(parsed, settings, progress, check)
    if parsed.scheme == "civitai":
        url = f"{settings.civitai_root.rstrip('/')}/{parsed.location}"
        download = _Download(
            url=f"{url}?token={settings.civitai_token}" if settings.civitai_token else url,
            key_url=url,
            name=filename,
            default_name=f"{parsed.location}.safetensors",
            settings=settings,
            sha256=expected,
        )
    else:
        download = _Download(
            url=parsed.location,
            key_url=parsed.location,
            name=filename,
            default_name=urlsplit(parsed.location).path.rsplit("/", 1)[-1],
            settings=settings,
            sha256=expected,
        )
    return download.fetch(progress, check)


def _fetch_local(location: str, settings: SourceSettings) -> Path:
    """A local path inside the import root (symlinks followed), returned in place."""
    if settings.import_root is None:
        raise SourceError("bad_source", "local sources are disabled: no import root is configured")
    root = settings.import_root.resolve()
    path = (root / location).resolve()
    if not path.is_relative_to(root):
        raise SourceError("bad_source", f"local source {location!r} lies outside the import root")
    if not path.exists():
        raise SourceError("source_missing", f"local source {location!r} does not exist in the import root")
    if path.is_dir():
        _require_links_inside(path, root, location)
    return path


def _require_links_inside(folder: Path, root: Path, location: str) -> None:
    """Refuse a folder holding a link that leads out of the import root: its files are copied and
    published, so such a link would publish whatever file of the worker it names."""
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            item = Path(parent) / name
            if item.is_symlink() and not item.resolve().is_relative_to(root):
                shown = item.relative_to(folder).as_posix()
                raise SourceError(
                    "bad_source", f"local source {location!r} holds {shown!r}, a link out of the import root"
                )


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` without URL query strings (they may carry tokens) and without the given secrets."""
    text = re.sub(r"\?[^\s'\"<>)]*", "?<redacted>", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _safe_name(name: str) -> str:
    """A file name that cannot leave its folder nor hide: word characters, dots and dashes."""
    name = re.sub(r"[^\w.-]", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    return name[:128]


def _hash_file(path: Path, digest: Any) -> Any:
    """``digest`` updated with the content of ``path``."""
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest


def _checked_pools(allow_private: bool) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections open through ``service.fetch.connect_checked``."""

    def new_conn(connection: HTTPConnection) -> socket.socket:
        timeout = connection.timeout if isinstance(connection.timeout, int | float) else None
        try:
            sock = connect_checked(
                connection._dns_host,
                connection.port,
                timeout_s=timeout or DEFAULT_CONNECT_TIMEOUT_S,
                allow_private=allow_private,
            )
        except SourceURLTimeout as err:
            raise urllib3.exceptions.ConnectTimeoutError(connection, str(err)) from None
        except SourceURLBlocked:
            raise
        except SourceURLError as err:
            raise urllib3.exceptions.NewConnectionError(connection, str(err)) from None
        for option in connection.socket_options or ():
            sock.setsockopt(*option)
        return sock

    checked_http = type("CheckedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn})
    checked_https = type("CheckedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn})
    return {
        "http": type("CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": checked_http}),
        "https": type("CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": checked_https}),
    }


#: The pools of downloads from public servers, and of those from a mirror the URL names by a
#: private address.
CHECKED_POOLS = {allow: _checked_pools(allow) for allow in (False, True)}


def _names_private_host(url: str, timeout_s: float) -> bool:
    """Whether ``url``'s own host is a private address or resolves only to such: a mirror in the
    operator's network, named on purpose. Link-local hosts raise ``SourceURLBlocked``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = checked_addresses(parts.hostname or "", port, timeout_s=timeout_s, allow_private=True)
    except SourceURLBlocked:
        raise
    except SourceURLError:
        return False  # the connection fails on its own, and is retried
    return all(blocked_reason(address) is not None for address in addresses)


class _TransientError(Exception):
    """A download attempt failed in a way another attempt may not (connection, timeout, 5xx)."""


class _Throttled:
    """Calls ``progress`` at most once per interval, plus the final call."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._last = 0.0

    def __call__(self, done: int, total: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self._progress(done, total)


@dataclass
class _Download:
    """One http(s) download into ``<cache>/downloads``, resumable and verified.

    Files: ``<key>.part`` while downloading, ``<key>-<name>`` when finished, ``<key>.done`` (JSON:
    name, size, sha256) once the finished file is in place, and ``<key>.lock`` held by whoever is
    downloading. The key is the sha256 of ``key_url``: the URL without a token added from settings.
    """

    url: str
    key_url: str
    name: str | None
    default_name: str
    settings: SourceSettings
    sha256: str | None

    def __post_init__(self) -> None:
        self.folder = self.settings.cache / "downloads"
        self.key = hashlib.sha256(self.key_url.encode()).hexdigest()[:16]
        self.part = self.folder / f"{self.key}.part"
        self.marker = self.folder / f"{self.key}.done"
        self.shown_url = redact(self.url, (self.settings.civitai_token,))

    def fetch(self, progress: Progress, check: Callable[[], None]) -> Path:
        """The finished file: reused when already here, else downloaded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            finished = self._finished()
            if finished is not None:
                logger.info("download reused", extra={"url": self.shown_url, "path": str(finished)})
                return finished
            if urlsplit(self.url).scheme == "http":
                logger.warning("downloading over plain http", extra={"url": self.shown_url})
            retrying = tenacity.Retrying(
                stop=tenacity.stop_after_attempt(DOWNLOAD_ATTEMPTS),
                wait=tenacity.wait_exponential(multiplier=DOWNLOAD_BACKOFF_S, max=4),
                retry=tenacity.retry_if_exception_type(_TransientError),
                before_sleep=self._log_retry,
                reraise=True,
            )
            throttled = _Throttled(progress)
            try:
                private = _names_private_host(self.url, self.settings.timeout_s)
                with urllib3.PoolManager(
                    timeout=urllib3.Timeout(connect=self.settings.timeout_s, read=self.settings.timeout_s)
                ) as pool:
                    pool.pool_classes_by_scheme = CHECKED_POOLS[private]
                    return cast(Path, retrying(self._attempt, pool, throttled, check))
            except _TransientError as err:
                raise SourceError(
                    "download_failed",
                    f"download from {self.shown_url} failed {DOWNLOAD_ATTEMPTS} times: {err}",
                ) from None
            except SourceURLBlocked as err:
                raise SourceError(
                    "bad_source", f"download from {self.shown_url} refused: {redact(str(err))}"
                ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``<key>.lock`` so that two workers sharing a cache never write one ``.part``."""
        with (self.folder / f"{self.key}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _finished(self) -> Path | None:
        """The finished file when its marker matches its size and the expected sha256."""
        try:
            done = json.loads(self.marker.read_text())
            path = self.folder / f"{self.key}-{_safe_name(done['name'])}"
            if path.stat().st_size != done["size"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if self.sha256 is not None and done.get("sha256") != self.sha256:
            return None
        return path

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "download attempt failed, retrying",
            extra={"url": self.shown_url, "download_attempt": state.attempt_number, "error": str(error)},
        )

    def _attempt(self, pool: urllib3.PoolManager, progress: _Throttled, check: Callable[[], None]) -> Path:
        """One request: resume the ``.part`` when the server allows, stream, verify, move in place."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = pool.request(
                "GET",
                self.url,
                headers=headers,
                preload_content=False,
                redirect=True,
                retries=urllib3.Retry(
                    total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS
                ),
            )
        except urllib3.exceptions.HTTPError as err:
            raise _TransientError(self._describe(err)) from None
        try:
            return self._receive(response, offset, progress, check)
        except urllib3.exceptions.HTTPError as err:
            raise _TransientError(self._describe(err)) from None
        finally:
            response.close()
            response.release_conn()

    def _describe(self, err: Exception) -> str:
        reason = getattr(err, "reason", None) or err
        return redact(f"{type(reason).__name__}: {reason}", (self.settings.civitai_token,))

    def _receive(
        self,
        response: urllib3.BaseHTTPResponse,
        offset: int,
        progress: _Throttled,
        check: Callable[[], None],
    ) -> Path:
        status = response.status
        if status >= 500:
            raise _TransientError(f"the server answered HTTP {status}")
        if status == 416 or (status == 206 and _range_start(response) != offset):
            self.part.unlink(missing_ok=True)
            raise _TransientError(f"the server refused to resume at byte {offset} (HTTP {status})")
        if status not in (200, 206):
            raise SourceError("download_failed", f"{self.shown_url} answered HTTP {status}")
        if status == 200:
            offset = 0
        total = _total_size(response, offset)
        if total > self.settings.max_bytes:
            self.part.unlink(missing_ok=True)
            raise SourceError(
                "too_large",
                f"{self.shown_url} is {total} bytes, over the limit of {self.settings.max_bytes} bytes",
            )
        digest = hashlib.sha256()
        if offset:
            _hash_file(self.part, digest)
        done = offset
        with self.part.open("ab" if offset else "wb") as file:
            # read1 hands over whatever arrived, so a cut connection loses nothing already received.
            while chunk := response.read1(DOWNLOAD_CHUNK_BYTES):
                check()
                done += len(chunk)
                if done > self.settings.max_bytes:
                    file.close()
                    self.part.unlink(missing_ok=True)
                    raise SourceError(
                        "too_large",
                        f"{self.shown_url} is over the limit of {self.settings.max_bytes} bytes",
                    )
                file.write(chunk)
                digest.update(chunk)
                progress(done, total)
        return self._finish(response, digest.hexdigest(), done, progress)

    def _finish(
        self, response: urllib3.BaseHTTPResponse, actual: str, size: int, progress: _Throttled
    ) -> Path:
        """Verify the hash, move the ``.part`` in place and write the marker."""
        if self.sha256 is not None and actual != self.sha256:
            self.part.unlink(missing_ok=True)
            raise SourceError(
                "hash_mismatch", f"{self.shown_url} has sha256 {actual}, expected {self.sha256}"
            )
        name = _safe_name(self.name or _disposition_name(response) or self.default_name) or "download"
        path = self.folder / f"{self.key}-{name}"
        os.replace(self.part, path)
        marker = self.marker.with_suffix(".done-tmp")
        marker.write_text(json.dumps({"name": name, "size": size, "sha256": actual}))
        os.replace(marker, self.marker)
        progress(size, size, final=True)
        logger.info("download finished", extra={"url": self.shown_url, "path": str(path), "bytes": size})
        return path


def _range_start(response: urllib3.BaseHTTPResponse) -> int | None:
    """The first byte a 206 answer holds, from Content-Range."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _total_size(response: urllib3.BaseHTTPResponse, offset: int) -> int:
    """The whole file's size from Content-Range or Content-Length, 0 when unknown."""
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length", "")
    return offset + int(length) if length.isdigit() else 0


def _disposition_name(response: urllib3.BaseHTTPResponse) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266, with RFC 2231 encoded names)."""
    value = response.headers.get("Content-Disposition")
    if not value:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = value
    return message.get_filename()


# --- the Hugging Face hub ----------------------------------------------------------------------


class _FileCounter:
    """Stands in for the tqdm bars ``snapshot_download`` draws: shows nothing, counts finished files.

    snapshot_download makes byte bars (``unit="B"``), which are ignored, and one bar counting files,
    updated on the calling thread as each file finishes: that one calls ``on_file(files done)``.
    """

    def __init__(self, on_file: Callable[[int], None], **kwargs: Any) -> None:
        self.total = kwargs.get("total")
        self.n = kwargs.get("initial", 0)
        self.format_dict: dict[str, Any] = {}
        self._on_file = on_file if "unit" not in kwargs else None

    def __enter__(self) -> _FileCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float | None = 1) -> None:
        self.n += n or 0
        if self._on_file is not None:
            self._on_file(int(self.n))

    def close(self) -> None:
        """Nothing to close."""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to draw."""

    set_description = set_description_str = set_postfix_str = refresh


def _hub_patterns(allow_pickle: bool) -> list[str]:
    return [*HUB_PATTERNS, *(PICKLE_PATTERNS if allow_pickle else ())]


def _fetch_hub(
    parsed: ParsedSource, settings: SourceSettings, progress: Progress, check: Callable[[], None]
) -> Path:
    """A snapshot of ``org/repo``, size-checked from the hub's listing before any file download."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    repo, revision = parsed.location, parsed.revision
    shown = f"{repo}@{revision}" if revision else repo
    patterns = _hub_patterns(settings.allow_pickle)
    sizes = _hub_sizes(repo, revision, patterns, settings)
    total = sum(sizes) if sizes is not None else 0
    check()

    def on_file(files_done: int) -> None:
        check()
        if sizes:
            progress(total * files_done // len(sizes), total)

    try:
        folder = huggingface_hub.snapshot_download(
            repo,
            revision=revision,
            cache_dir=settings.cache / "hub",
            token=settings.hf_token,
            endpoint=settings.hf_endpoint,
            allow_patterns=patterns,
            local_files_only=sizes is None,
            max_workers=HUB_MAX_WORKERS,
            tqdm_class=cast(Any, functools.partial(_FileCounter, on_file)),
        )
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as err:
        raise _hub_refusal(err, shown) from err
    except hub_errors.LocalEntryNotFoundError as err:
        raise SourceError(
            "download_failed",
            f"{shown} is not cached and the hub cannot be reached (offline or network down)",
        ) from err
    except (hub_errors.HfHubHTTPError, hub_errors.IncompleteSnapshotError, httpx2.HTTPError, OSError) as err:
        raise SourceError("download_failed", f"{shown} could not be downloaded: {_first_line(err)}") from err
    progress(total, total)
    logger.info("hub snapshot ready", extra={"repo": repo, "revision": revision, "bytes": total})
    return Path(folder)


def _hub_refusal(err: Exception, shown: str) -> SourceError:
    """What the hub's "not found" means: a gated repository (a subclass), or a missing one."""
    from huggingface_hub import errors as hub_errors

    if isinstance(err, hub_errors.GatedRepoError):
        return SourceError(
            "download_failed", f"{shown} is gated: accept its terms on the hub and give the worker a token"
        )
    return SourceError("source_missing", f"{shown} was not found on the hub")


def _hub_sizes(
    repo: str, revision: str | None, patterns: list[str], settings: SourceSettings
) -> list[int] | None:
    """Sizes of the files a snapshot would fetch; raises ``too_large`` over the limit.

    None when the hub cannot be asked (offline mode, network down, hub errors): the caller then uses
    only what is cached.
    """
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.utils import filter_repo_objects

    shown = f"{repo}@{revision}" if revision else repo
    try:
        info = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token).model_info(
            repo, revision=revision, files_metadata=True, timeout=settings.timeout_s
        )
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as err:
        raise _hub_refusal(err, shown) from err
    except (hub_errors.HfHubHTTPError, hub_errors.OfflineModeIsEnabled, httpx2.HTTPError) as err:
        logger.warning(
            "hub listing unavailable, using the cache only",
            extra={"repo": repo, "revision": revision, "error": type(err).__name__},
        )
        return None
    siblings = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or ()}
    wanted = list(filter_repo_objects(siblings, allow_patterns=patterns))
    if not settings.allow_pickle and not any(name.endswith(SAFE_WEIGHT_SUFFIXES) for name in wanted):
        pickles = list(filter_repo_objects(siblings, allow_patterns=list(PICKLE_PATTERNS)))
        if pickles:
            raise SourceError(
                "pickle_refused", f"{shown} has only pickle weights ({pickles[0]}, ...): {ALLOW_PICKLE_HINT}"
            )
    sizes = [siblings[name] for name in wanted]
    if sum(sizes) > settings.max_bytes:
        raise SourceError(
            "too_large",
            f"{shown}'s {len(sizes)} files hold {sum(sizes)} bytes, "
            f"over the limit of {settings.max_bytes} bytes",
        )
    return sizes


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


# --- vetting -----------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """What ``path`` holds, by content: safetensors, pickle, zip, onnx, diffusers, folder or unknown."""
    if path.is_dir():
        return "diffusers" if (path / "model_index.json").is_file() else "folder"
    if not path.is_file():
        return "unknown"
    with path.open("rb") as file:
        head = file.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if zipfile.is_zipfile(path):
        return "pickle" if _zip_holds_pickle(path) else "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if path.suffix.lower() == ".onnx" and _is_onnx_head(head):
        return "onnx"
    return "unknown"


def _zip_holds_pickle(path: Path) -> bool:
    """Whether a zip is torch.save's format: a ``<name>/data.pkl`` member."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _is_onnx_head(head: bytes) -> bool:
    """Whether ``head`` starts an ONNX ModelProto: its ir_version (field 1, a small varint) comes first."""
    return len(head) >= 2 and head[0] == 0x08 and 0 < head[1] < 0x80


def require_loadable(path: Path, allow_pickle: bool) -> None:
    """Refuse a pickle file, or a folder holding pickle weights, unless pickles are allowed."""
    if allow_pickle:
        return
    if path.is_dir():
        found = sorted(
            str(item.relative_to(path))
            for pattern in PICKLE_PATTERNS
            for item in path.rglob(pattern)
            if item.is_file()
        )
        if found:
            listed = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise SourceError(
                "pickle_refused", f"{path.name} holds pickle weights ({listed}): {ALLOW_PICKLE_HINT}"
            )
    elif detect_format(path) == "pickle":
        raise SourceError("pickle_refused", f"{path.name} is a pickle: {ALLOW_PICKLE_HINT}")


def read_safetensors_header(path: Path, max_header_bytes: int = 100 * 2**20) -> dict[str, Any]:
    """The JSON header of a safetensors file, read with bounds; ``bad_source`` when it is not one."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise SourceError("bad_source", f"{path.name} is too short to be a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > max_header_bytes:
            raise SourceError(
                "bad_source", f"{path.name}'s safetensors header is {length} bytes, over {max_header_bytes}"
            )
        if length > size - 8:
            raise SourceError("bad_source", f"{path.name}'s safetensors header length exceeds the file")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise SourceError("bad_source", f"{path.name}'s safetensors header is not valid JSON") from err
    if not isinstance(header, dict):
        raise SourceError("bad_source", f"{path.name}'s safetensors header is not a JSON object")
    return header

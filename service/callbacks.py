"""Job-end callbacks: a signed POST of the job's record to the URL its submission named.

Every api process runs a ``CallbackDispatcher`` thread; they share the outbox (``callbacks``
table) through ``FOR UPDATE SKIP LOCKED``, so each try is made by one process. A try is a POST
of the job's status record (what ``/api/job/status`` answers for it) with two headers:

- ``X-Onnx-Web-Timestamp``: Unix seconds when it was signed;
- ``X-Onnx-Web-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with
  ``ONNX_WEB_CALLBACK_SECRET``, of ``<timestamp>.<body>``; a receiver recomputes it and rejects
  old timestamps to refuse replays. In keys mode each owner's callbacks are keyed with a key of
  its own (``owner_signing_key``, derived from the secret; ``onnx-web keys create`` prints it), so
  no user holds a key that signs for another user's receiver.

A 2xx answer delivers it; anything else (or no answer within ``TIMEOUT_S``) is tried again after
``RETRY_BASE_S * 2**(n-1)`` seconds (at most ``RETRY_MAX_S``), ``MAX_ATTEMPTS`` tries in all. The
URL passes the same SSRF checks as ``source-url`` (``service.fetch``), at submit and at each try.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import InvalidParams
from service.fetch import SourceURLError, parse_source_url, post_json
from service.jobs.callbacks import CallbackStore, Delivery
from service.jobs.store import JobStore
from service.resources.jobs import render_job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
RETRY_BASE_S = 5.0
RETRY_MAX_S = 3600.0
TIMEOUT_S = 10.0
#: How often an idle dispatcher looks for due callbacks, and how many it tries in one round.
POLL_S = 1.0
BATCH = 10


def check_callback_url(url: object, *, allow_private: bool, secret: str | None) -> str:
    """A submission's ``callback``: an http(s) URL outside private networks; 400 otherwise."""
    if not isinstance(url, str):
        raise InvalidParams("callback", "must be an http or https URL")
    if not secret:
        raise InvalidParams(
            "callback", "this server takes no callbacks (ONNX_WEB_CALLBACK_SECRET is not set)"
        )
    try:
        parse_source_url(url, allow_private=allow_private)
    except SourceURLError as err:
        raise InvalidParams("callback", str(err).replace("source URL", "callback URL")) from err
    return url


def owner_signing_key(secret: str, owner: str) -> str:
    """The key that signs the callbacks of ``owner``'s jobs in keys mode: derived from the server's
    secret (HMAC-SHA256, hex), so each owner verifies with a key that signs for it alone."""
    return hmac.new(secret.encode(), b"onnx-web callback key\0" + owner.encode(), hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Onnx-Web-Signature`` of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


@dataclass
class CallbackDispatcher:
    """Delivers due callbacks, in a thread of its own or one batch at a time (``deliver_due``)."""

    outbox: CallbackStore
    jobs: JobStore
    #: Keys the signatures (``ONNX_WEB_CALLBACK_SECRET``).
    secret: str
    allow_private: bool = False
    #: Keys mode: each owner's callbacks are signed with ``owner_signing_key``, not the secret.
    per_owner: bool = False
    #: Sends one POST (``service.fetch.post_json``'s signature).
    post: Callable[..., int] = post_json
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="callbacks", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def deliver_due(self) -> int:
        """Try up to ``BATCH`` due callbacks once each; returns how many were tried.

        Each is claimed just before its try: a lease covers one try, so while slow receivers hold
        this dispatcher, the callbacks behind them go to the other dispatchers, instead of waiting
        out leases taken for them here, or being taken and posted again once those ran out.
        """
        tried = 0
        while tried < BATCH:
            claimed = self.outbox.claim(1, lease_s=TIMEOUT_S * 3)
            if not claimed:
                break
            self._try(claimed[0])
            tried += 1
        return tried

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = self.deliver_due() == BATCH
            except Exception as err:
                log.warning("callback dispatch failed", extra={"error": type(err).__name__})
                busy = False
            if not busy:
                self._stopping.wait(POLL_S)

    def _key(self, owner: str) -> str:
        return owner_signing_key(self.secret, owner) if self.per_owner else self.secret

    def _try(self, delivery: Delivery) -> None:
        view = self.jobs.get_many([delivery.job_name]).get(delivery.job_name)
        body = json.dumps(render_job(delivery.job_name, view), separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "X-Onnx-Web-Timestamp": str(timestamp),
            "X-Onnx-Web-Signature": sign(self._key(delivery.owner), timestamp, body),
            "X-Onnx-Web-Delivery": str(delivery.id),
        }
        keys = {"callback": delivery.id, "job": delivery.job_name, "attempt": delivery.attempt}
        try:
            status = self.post(
                delivery.url, body, headers, timeout_s=TIMEOUT_S, allow_private=self.allow_private
            )
            error = None if 200 <= status < 300 else f"answered {status}"
        except SourceURLError as err:
            error = str(err)
        if error is None:
            self.outbox.delivered(delivery.id)
            log.info("callback delivered", extra=keys)
            return
        retry_in_s = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (delivery.attempt - 1))
        self.outbox.failed(delivery.id, error, retry_in_s=retry_in_s, max_attempts=MAX_ATTEMPTS)
        given_up = delivery.attempt >= MAX_ATTEMPTS
        log.warning(
            "callback given up" if given_up else "callback failed; will retry", extra={**keys, "error": error}
        )

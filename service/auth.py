"""Who is asking: API keys, job ownership and per-key request rates (``ONNX_WEB_AUTH=keys``).

With auth ``off`` (what ``make run`` starts, and onnx-web's behaviour) every request is anonymous
and sees every job. With ``keys``, each resource declares its ``access``:

- ``public``: settings, probes, the GUI's files, the route list and the API document;
- ``key`` (the default): ``Authorization: Bearer <key>``; the request acts as the key's owner, and
  another owner's jobs are as if they did not exist;
- ``admin``: a key made with ``--admin`` (or, as before, the admin token). An admin key also
  sees and cancels every owner's jobs by name on the ``key`` routes.

A missing or unknown key is a 401, a revoked one a 403, a key over its requests-per-minute a 429
with ``Retry-After``; all as JSON, and nothing is created.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Literal

import falcon

from service.errors import Forbidden, TooManyRequests, Unauthorized
from service.jobs.keys import ApiKey, KeyStore

Access = Literal["public", "key", "admin"]
#: The owner of every job in anonymous mode.
ANONYMOUS = "anonymous"


def bearer(req: falcon.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_owner(req: falcon.Request) -> str | None:
    """The owner of the request's key; None in anonymous mode."""
    key: ApiKey | None = req.context.get("key")
    return None if key is None else key.owner


def owner_filter(req: falcon.Request) -> str | None:
    """The owner whose jobs this request may see and cancel by name; None (every job) in anonymous
    mode and for an admin key, which looks after every owner's jobs (conversion jobs made with
    the admin token, owned by ``admin``, included)."""
    key: ApiKey | None = req.context.get("key")
    return None if key is None or key.admin else key.owner


def owner_of(req: falcon.Request) -> str:
    """The owner a job submitted by this request belongs to."""
    return key_owner(req) or ANONYMOUS


class KeyAuth:
    """Falcon middleware of keys mode: finds the request's key before its resource runs."""

    def __init__(self, keys: KeyStore, admin_token: str) -> None:
        self.keys = keys
        self._admin_token = admin_token.encode()

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any
    ) -> None:
        access: Access = getattr(resource, "access", "key")
        if resource is None or access == "public" or req.method == "OPTIONS":
            return
        token = bearer(req) or (req.get_param("token") if access == "admin" else None)
        if access == "admin" and token and hmac.compare_digest(token.encode(), self._admin_token):
            return
        if token is None:
            raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
        key = self.keys.find(token)
        if key is None:
            raise Unauthorized("unknown API key")
        if key.revoked:
            raise Forbidden(f"API key {key.id} was revoked")
        if access == "admin" and not key.admin:
            raise Forbidden("this route needs an admin key")
        if key.rate_per_min is not None and not self.keys.use(key.id, "minute", 1, key.rate_per_min):
            raise TooManyRequests(
                f"rate limit of API key {key.id}: {key.rate_per_min} requests per minute",
                retry_after_s=60 - int(time.time()) % 60,
            )
        req.context.key = key

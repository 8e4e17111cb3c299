"""``KeyStore``: API keys and their quotas, the one owner of ``api_keys`` and ``key_usage``.

A key is ``owk_<id>_<secret>``: the id is public (listed, revoked by), the secret is 32 random
bytes. Only the SHA-256 of the whole key is stored, so a database dump reveals no key; the key
itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Engine

from service.jobs.queries import QUERIES

KEY_PREFIX = "owk"
#: Quota periods: requests are counted per minute, pixel-steps per day.
Period = Literal["minute", "day"]


@dataclass(frozen=True)
class ApiKey:
    """A key as a request presents it: who owns it and what it may do."""

    id: str
    owner: str
    admin: bool
    #: Jobs pending or running at once; None: no limit.
    max_running: int | None
    #: Requests per minute; None: no limit.
    rate_per_min: int | None
    #: Pixels times scheduler steps submitted per day (UTC); None: no limit.
    pixel_steps_per_day: int | None
    revoked: bool = False


@dataclass(frozen=True)
class KeyListing:
    """A key as ``onnx-web keys list`` shows it (never the key, never its hash)."""

    key: ApiKey
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    pixel_steps_today: int


def key_hash(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """Create, find, list and revoke API keys; count their use against their limits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self,
        owner: str,
        *,
        admin: bool = False,
        max_running: int | None = None,
        rate_per_min: int | None = None,
        pixel_steps_per_day: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a new key for ``owner``; returns it and the key text, which is never seen again."""
        key = ApiKey(secrets.token_hex(4), owner, admin, max_running, rate_per_min, pixel_steps_per_day)
        text = f"{KEY_PREFIX}_{key.id}_{secrets.token_urlsafe(32)}"
        params = {
            "id": key.id,
            "owner": owner,
            "key_hash": key_hash(text),
            "admin": admin,
            "max_running": max_running,
            "rate_per_min": rate_per_min,
            "pixel_steps_per_day": pixel_steps_per_day,
        }
        with self._engine.begin() as conn:
            conn.execute(QUERIES["insert_key"], params)
        return key, text

    def find(self, text: str) -> ApiKey | None:
        """The key whose text this is (revoked keys included, marked), or None."""
        with self._engine.begin() as conn:
            row = conn.execute(QUERIES["select_key_by_hash"], {"key_hash": key_hash(text)}).one_or_none()
        return None if row is None else ApiKey(**row._mapping)

    def list(self) -> list[KeyListing]:
        """Every key, oldest first, with today's pixel-steps."""
        with self._engine.begin() as conn:
            rows = conn.execute(QUERIES["select_keys"]).all()
        return [
            KeyListing(
                key=ApiKey(
                    row.id,
                    row.owner,
                    row.admin,
                    row.max_running,
                    row.rate_per_min,
                    row.pixel_steps_per_day,
                    revoked=row.revoked_at is not None,
                ),
                created_at=row.created_at,
                revoked_at=row.revoked_at,
                last_used_at=row.last_used_at,
                pixel_steps_today=row.pixel_steps_today,
            )
            for row in rows
        ]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no live key with that id."""
        with self._engine.begin() as conn:
            return conn.execute(QUERIES["revoke_key"], {"id": key_id}).first() is not None

    def active_jobs(self, owner: str) -> int:
        """Jobs of ``owner`` pending or running now."""
        with self._engine.begin() as conn:
            return int(conn.execute(QUERIES["count_owner_active"], {"owner": owner}).scalar_one())

    def use(self, key_id: str, period: Period, amount: int, limit: int) -> bool:
        """Count ``amount`` against the key's ``limit`` for this period; False (and nothing counted)
        when it would pass the limit."""
        params = {"key_id": key_id, "period": period, "amount": amount, "limit": limit}
        with self._engine.begin() as conn:
            return conn.execute(QUERIES["use_quota"], params).first() is not None

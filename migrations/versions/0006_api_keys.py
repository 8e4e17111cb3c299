"""Add API keys and their usage counters: hosted use, where every job has an owner.

``api_keys`` holds only a key's SHA-256 (the key itself is shown once, by ``onnx-web keys
create``), its owner and its limits; ``key_usage`` counts requests per minute and pixel-steps per
day for the limits to be checked by every api process alike. ``jobs_owner_active_idx`` answers "how
many jobs does this owner have pending or running" without scanning the history, and
``jobs_owner_created_idx`` pages an owner's jobs newest first (``GET /api/jobs``).
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0006"
down_revision = "0005"

UPGRADE = (
    """
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        owner text NOT NULL,
        key_hash text NOT NULL UNIQUE,
        admin boolean NOT NULL DEFAULT false,
        max_running integer CHECK (max_running > 0),
        rate_per_min integer CHECK (rate_per_min > 0),
        pixel_steps_per_day bigint CHECK (pixel_steps_per_day > 0),
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz,
        last_used_at timestamptz
    )
    """,
    "COMMENT ON TABLE api_keys IS 'API keys by SHA-256; written only by service/jobs/keys.py'",
    """
    CREATE TABLE key_usage (
        key_id text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
        period text NOT NULL CHECK (period IN ('minute', 'day')),
        starts_at timestamptz NOT NULL,
        amount bigint NOT NULL CHECK (amount >= 0),
        PRIMARY KEY (key_id, period, starts_at)
    )
    """,
    "COMMENT ON TABLE key_usage IS 'requests per minute and pixel-steps per day of each key'",
    # Active jobs are those not finished (jobs_finished_iff_terminal). Partial on finished_at, not
    # on state, so this index never competes with jobs_claim_idx for the claim's "state = 'pending'".
    "CREATE INDEX jobs_owner_active_idx ON jobs (owner) WHERE finished_at IS NULL",
    "CREATE INDEX jobs_owner_created_idx ON jobs (owner, created_at DESC, id DESC)",
)
DOWNGRADE = (
    "DROP INDEX jobs_owner_created_idx",
    "DROP INDEX jobs_owner_active_idx",
    "DROP TABLE key_usage",
    "DROP TABLE api_keys",
)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

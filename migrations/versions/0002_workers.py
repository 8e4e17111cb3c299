"""Add the workers table: live workers announce their platform, providers and loaded models.

The api lists platforms from it (``/api/settings/platforms``) and reports workers to admins;
``restart_requested`` lets an admin recycle every worker without touching the orchestrator.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0002"
down_revision = "0001"

UPGRADE = (
    """
    CREATE TABLE workers (
        id text PRIMARY KEY,
        platform text NOT NULL,
        providers jsonb NOT NULL DEFAULT '[]',
        models jsonb NOT NULL DEFAULT '[]',
        version text,
        jobs_done integer NOT NULL DEFAULT 0,
        restart_requested boolean NOT NULL DEFAULT false,
        started_at timestamptz NOT NULL DEFAULT now(),
        seen_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT workers_json_shapes CHECK (jsonb_typeof(providers) = 'array' AND jsonb_typeof(models) = 'array'),
        CONSTRAINT workers_jobs_done_not_negative CHECK (jobs_done >= 0)
    )
    """,
    "COMMENT ON TABLE workers IS 'One row per worker process, refreshed while it lives; written only by service/jobs/store.py'",
    "CREATE INDEX workers_seen_at_idx ON workers (seen_at)",
)
DOWNGRADE = ("DROP TABLE workers",)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""Add ``jobs.memory`` and ``workers.memory_bytes``: jobs are claimed only by workers that hold them.

``jobs.memory`` is the api's estimate of a job's peak memory per kind of device
(``{"cpu": bytes, "gpu": bytes}``, see ``pipelines.memory``); ``workers.memory_bytes`` is what one
job may use on a worker (``service.capacity``). NULL in either means unknown: such a job or worker
is matched as before. Nullable columns without defaults only change the catalog.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0005"
down_revision = "0004"

UPGRADE = (
    "ALTER TABLE jobs ADD COLUMN memory jsonb",
    "ALTER TABLE jobs ADD CONSTRAINT jobs_memory_is_object CHECK (jsonb_typeof(memory) = 'object')",
    "COMMENT ON COLUMN jobs.memory IS "
    '\'estimated peak bytes per device kind, {"cpu": n, "gpu": n}; NULL: not estimated\'',
    "ALTER TABLE workers ADD COLUMN memory_bytes bigint",
    "ALTER TABLE workers ADD CONSTRAINT workers_memory_positive CHECK (memory_bytes > 0)",
    "COMMENT ON COLUMN workers.memory_bytes IS 'bytes one job may use on this worker; NULL: unknown'",
)
DOWNGRADE = (
    "ALTER TABLE workers DROP COLUMN memory_bytes",
    "ALTER TABLE jobs DROP COLUMN memory",
)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""Back off between attempts: ``jobs.retry_at``, before which a job put back in the queue is not claimed.

A failed attempt that may be retried (``finish_failed``) and a rescued one (``rescue_expired``)
used to be claimable at once, so a dependency blip of a few seconds (S3 refusing uploads, a
database failover) spent every attempt of a job within the blip, and a job that kills its worker
was handed to the next one right away. Both now set ``retry_at`` to a growing delay, and
``claim_batch`` passes over a job until then. NULL (every job never retried, and a job a worker
handed back on shutdown) is due now.

Adding a NULL column and a CHECK that every existing row meets is quick (the check reads the
table once under its lock); no index: the claim filters the few waiting rows off the walk of
``jobs_claim_idx``.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0014"
down_revision = "0013"

UPGRADE = (
    "ALTER TABLE jobs ADD COLUMN retry_at timestamptz",
    # Only a queued job waits for a retry: claiming or ending one clears it.
    "ALTER TABLE jobs ADD CONSTRAINT jobs_retry_at_pending CHECK (retry_at IS NULL OR state = 'pending')",
)
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN retry_at",)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""Add ``workers.device``: the CUDA device index a worker runs on, so admins see one worker per GPU.

``onnx-web worker --device N`` (or ``ONNX_WEB_DEVICE``) pins a worker to device N; the column is
NULL for workers without the CUDA provider. Adding a nullable column without a default only
changes the catalog, so this runs instantly on a live table.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0004"
down_revision = "0003"

UPGRADE = (
    "ALTER TABLE workers ADD COLUMN device integer",
    "ALTER TABLE workers ADD CONSTRAINT workers_device_not_negative CHECK (device >= 0)",
    "COMMENT ON COLUMN workers.device IS 'CUDA device index the worker runs every session on; NULL: no CUDA provider'",
)
DOWNGRADE = ("ALTER TABLE workers DROP COLUMN device",)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""Add ``jobs.batch_key``: what a plain txt2img job must share with others to run in one UNet batch.

A job is batchable when its chain is exactly ``[source-txt2img, persist-disk]`` with no uploads,
one image (``batch`` 1), the whole-image VAE (``tiled_vae`` off, since the batched decoder does
not tile) and the plain SD pipeline (``pipeline`` txt2img: SDXL has its own text conditioning).
Its key is ``<width>x<height> <steps> <scheduler> <model>``; scheduler names have no spaces, so
two different parameter sets never share a key. Every other job has no key and is only ever
claimed alone. ``claim_batch`` finds a claimed job's mates through
``jobs_batch_idx``.

The column is generated and STORED (PostgreSQL 18's default, VIRTUAL, cannot be indexed):
adding it rewrites the table once, under an exclusive lock, so run this while the queue is quiet.
"""

from __future__ import annotations

from migrations import sql_steps
from migrations.batch_key import TXT2IMG_ONLY, batch_key_column

revision = "0003"
down_revision = "0002"

# The statements are batch_key_column's; claim_batch finds a job's mates, in queue order, through
# jobs_batch_idx, which holds only batchable pending jobs.
UPGRADE = batch_key_column(TXT2IMG_ONLY)
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key",)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

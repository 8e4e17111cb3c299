"""Keep jobs whose prompts name a LoRA out of UNet batches: ``jobs.batch_key`` is NULL for them.

A LoRA is blended into the UNet (``pipelines.diffusion.networks``), and the jobs of one batch share
one UNet: batched with plain jobs, a LoRA job would run without its LoRA, or lend it to the others.
Textual inversions change only the text encoder and tokenizer, which run per job, so they still
batch. The key is otherwise 0003's; the column is dropped and added again (a generated column's
expression cannot be altered before PostgreSQL 17), which rewrites the table once under an
exclusive lock, as 0003 did: run it while the queue is quiet.
"""

from __future__ import annotations

from migrations import sql_steps
from migrations.batch_key import NO_LORA, TXT2IMG_ONLY, batch_key_column

revision = "0009"
down_revision = "0008"

UPGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key", *batch_key_column(TXT2IMG_ONLY, *NO_LORA))
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key", *batch_key_column(TXT2IMG_ONLY))

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

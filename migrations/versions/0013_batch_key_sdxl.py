"""Let ``txt2img-sdxl`` jobs share UNet batches: they get a ``jobs.batch_key`` too.

The batched loop runs SDXL (each job's pooled text and size conditioning in its own rows), and a
``txt2img`` job on an SDXL model already batched. A job that names the ``txt2img-sdxl`` pipeline
had no key and ran alone. Its key now ends in `` sdxl``: it batches only with jobs that name that
pipeline too, so a batch never mixes a job that asks for SDXL with one that does not
(``txt2img-sdxl`` on an SD model fails alone, and ``service.batching`` runs such a job alone).
The conditions are otherwise 0009's. The column is dropped and added again, which rewrites the
table once under an exclusive lock, as 0009 did: run it while the queue is quiet.
"""

from __future__ import annotations

from migrations import sql_steps
from migrations.batch_key import NO_LORA, TXT2IMG_ONLY, batch_key_column

revision = "0013"
down_revision = "0012"

PIPELINE = "chain #>> '{stages,0,params,pipeline}'"
TXT2IMG_OR_SDXL = f"coalesce({PIPELINE}, 'txt2img') IN ('txt2img', 'txt2img-sdxl')"
SDXL_SUFFIX = f"CASE WHEN {PIPELINE} = 'txt2img-sdxl' THEN ' sdxl' ELSE '' END"

UPGRADE = (
    "ALTER TABLE jobs DROP COLUMN batch_key",
    *batch_key_column(TXT2IMG_OR_SDXL, *NO_LORA, key_suffix=SDXL_SUFFIX),
)
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key", *batch_key_column(TXT2IMG_ONLY, *NO_LORA))

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

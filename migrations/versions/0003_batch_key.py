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

revision = "0003"
down_revision = "0002"

UPGRADE = (
    """
    ALTER TABLE jobs ADD COLUMN batch_key text GENERATED ALWAYS AS (
        CASE
            WHEN jsonb_array_length(chain -> 'stages') = 2
                AND chain #>> '{stages,0,type}' = 'source-txt2img'
                AND chain #>> '{stages,1,type}' = 'persist-disk'
                AND coalesce(jsonb_array_length(chain -> 'sources'), 0) = 0
                AND inputs = '{}'
                AND coalesce(chain #> '{stages,0,params,batch}', '1') = '1'
                AND coalesce(chain #> '{stages,0,params,tiled_vae}', 'false') = 'false'
                AND coalesce(chain #>> '{stages,0,params,pipeline}', 'txt2img') = 'txt2img'
            THEN (chain #>> '{stages,0,params,width}') || 'x' || (chain #>> '{stages,0,params,height}')
                || ' ' || (chain #>> '{stages,0,params,steps}')
                || ' ' || (chain #>> '{stages,0,params,scheduler}')
                || ' ' || (chain #>> '{stages,0,params,model}')
        END
    ) STORED
    """,
    "COMMENT ON COLUMN jobs.batch_key IS 'Plain txt2img jobs with equal keys may share one UNet batch (claim_batch); NULL: never batched'",
    # Mates of a claimed job, in queue order; only batchable pending jobs are in it.
    """
    CREATE INDEX jobs_batch_idx ON jobs (batch_key, priority DESC, created_at)
    WHERE state = 'pending' AND batch_key IS NOT NULL
    """,
)
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key",)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

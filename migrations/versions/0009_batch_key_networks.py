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

revision = "0009"
down_revision = "0008"


def _batch_key(*extra_conditions: str) -> tuple[str, ...]:
    """The statements adding ``batch_key`` with 0003's conditions and ``extra_conditions``."""
    extra = "".join(f"\n                AND {condition}" for condition in extra_conditions)
    return (
        f"""
    ALTER TABLE jobs ADD COLUMN batch_key text GENERATED ALWAYS AS (
        CASE
            WHEN jsonb_array_length(chain -> 'stages') = 2
                AND chain #>> '{{stages,0,type}}' = 'source-txt2img'
                AND chain #>> '{{stages,1,type}}' = 'persist-disk'
                AND coalesce(jsonb_array_length(chain -> 'sources'), 0) = 0
                AND inputs = '{{}}'
                AND coalesce(chain #> '{{stages,0,params,batch}}', '1') = '1'
                AND coalesce(chain #> '{{stages,0,params,tiled_vae}}', 'false') = 'false'
                AND coalesce(chain #>> '{{stages,0,params,pipeline}}', 'txt2img') = 'txt2img'{extra}
            THEN (chain #>> '{{stages,0,params,width}}') || 'x' || (chain #>> '{{stages,0,params,height}}')
                || ' ' || (chain #>> '{{stages,0,params,steps}}')
                || ' ' || (chain #>> '{{stages,0,params,scheduler}}')
                || ' ' || (chain #>> '{{stages,0,params,model}}')
        END
    ) STORED
    """,
        "COMMENT ON COLUMN jobs.batch_key IS 'Plain txt2img jobs with equal keys may share one UNet batch "
        "(claim_batch); NULL: never batched'",
        """
    CREATE INDEX jobs_batch_idx ON jobs (batch_key, priority DESC, created_at)
    WHERE state = 'pending' AND batch_key IS NOT NULL
    """,
    )


#: A ``<lora:`` token anywhere in either prompt (the token's case is as onnx-web writes it).
NO_LORA = (
    "strpos(coalesce(chain #>> '{stages,0,params,prompt}', ''), '<lora:') = 0",
    "strpos(coalesce(chain #>> '{stages,0,params,negative_prompt}', ''), '<lora:') = 0",
)

UPGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key", *_batch_key(*NO_LORA))
DOWNGRADE = ("ALTER TABLE jobs DROP COLUMN batch_key", *_batch_key())

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

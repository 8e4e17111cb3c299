"""The generated ``jobs.batch_key`` column, as migrations 0003, 0009 and 0013 define it.

A generated column's expression cannot be altered before PostgreSQL 17, so each change drops the
column and adds it again (which rewrites the table once under an exclusive lock: run such a
migration while the queue is quiet). ``batch_key_column`` writes those statements for a set of
conditions and a key suffix; every migration keeps its own arguments, so what it runs never changes.
"""

from __future__ import annotations

#: A ``<lora:`` token anywhere in either prompt (the token's case is as onnx-web writes it): a
#: LoRA is blended into the UNet a batch would share (migration 0009).
NO_LORA = (
    "strpos(coalesce(chain #>> '{stages,0,params,prompt}', ''), '<lora:') = 0",
    "strpos(coalesce(chain #>> '{stages,0,params,negative_prompt}', ''), '<lora:') = 0",
)

#: The pipeline condition of migrations 0003 and 0009: plain ``txt2img`` only.
TXT2IMG_ONLY = "coalesce(chain #>> '{stages,0,params,pipeline}', 'txt2img') = 'txt2img'"


def batch_key_column(pipeline: str, *extra_conditions: str, key_suffix: str = "") -> tuple[str, ...]:
    """The statements adding ``batch_key``: 0003's plain-chain conditions, the ``pipeline``
    condition and ``extra_conditions``; the key is ``<width>x<height> <steps> <scheduler> <model>``
    followed by ``key_suffix`` (an SQL expression, appended when given)."""
    extra = "".join(f"\n                AND {condition}" for condition in extra_conditions)
    suffix = f"\n                || {key_suffix}" if key_suffix else ""
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
                AND {pipeline}{extra}
            THEN (chain #>> '{{stages,0,params,width}}') || 'x' || (chain #>> '{{stages,0,params,height}}')
                || ' ' || (chain #>> '{{stages,0,params,steps}}')
                || ' ' || (chain #>> '{{stages,0,params,scheduler}}')
                || ' ' || (chain #>> '{{stages,0,params,model}}'){suffix}
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

"""Extras documents kept in Postgres, and conversion jobs tied to the models they publish.

``PUT /api/extras`` stores each accepted document as a new row of ``extras_documents`` (the api is
stateless: no container's disk holds the catalogue) and ``GET /api/extras`` reads the newest. An
entry becomes a job of kind ``convert`` (its ``model`` column the model it will publish);
``models.entry_hash`` records which entry a ready version was converted from, so saving the
document again converts only entries whose model is missing or was made from another entry.
``models.variant`` tells a model's fp32 graphs (every worker runs them) from its fused fp16 graphs
for CUDA workers (``pipelines.gpu.optimize``): a name may have one ready version of each, and a
worker pulls its own variant when there is one. ``jobs_convert_idx`` lists the recent conversions
without reading the image jobs. ``jobs.preview`` (``{attempt, step}``) says that a running
attempt has stored a live preview of its latents (``service.previews``). Creating a table, adding columns, a partial index on a new kind of
rows and replacing the small registry's unique index take brief locks only.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0012"
down_revision = "0011"

UPGRADE = (
    """
    CREATE TABLE extras_documents (
        version bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        document jsonb NOT NULL CHECK (jsonb_typeof(document) = 'object'),
        text text NOT NULL CHECK (octet_length(text) <= 1048576),
        sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "COMMENT ON TABLE extras_documents IS 'every extras document accepted by PUT /api/extras; the newest is current'",
    "ALTER TABLE models ADD COLUMN entry_hash text CHECK (entry_hash ~ '^[0-9a-f]{64}$')",
    "COMMENT ON COLUMN models.entry_hash IS 'sha256 of the extras entry this version was converted from'",
    "ALTER TABLE models ADD COLUMN variant text NOT NULL DEFAULT 'fp32' CHECK (variant IN ('fp32', 'cuda'))",
    "COMMENT ON COLUMN models.variant IS 'fp32: graphs every worker runs; cuda: fused fp16 graphs for CUDA workers'",
    "DROP INDEX models_one_ready_idx",
    "CREATE UNIQUE INDEX models_one_ready_idx ON models (name, variant) WHERE state = 'ready'",
    "CREATE INDEX jobs_convert_idx ON jobs (created_at DESC) WHERE kind = 'convert'",
    "ALTER TABLE jobs ADD COLUMN preview jsonb",
    "COMMENT ON COLUMN jobs.preview IS 'the running attempt''s live preview image: {attempt, step}'",
)
DOWNGRADE = (
    "ALTER TABLE jobs DROP COLUMN preview",
    "DROP INDEX jobs_convert_idx",
    "DROP INDEX models_one_ready_idx",
    "DELETE FROM models WHERE variant <> 'fp32'",
    "CREATE UNIQUE INDEX models_one_ready_idx ON models (name) WHERE state = 'ready'",
    "ALTER TABLE models DROP COLUMN variant",
    "ALTER TABLE models DROP COLUMN entry_hash",
    "DROP TABLE extras_documents",
)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""Extras documents kept in Postgres, and conversion jobs tied to the models they publish.

``PUT /api/extras`` stores each accepted document as a new row of ``extras_documents`` (the api is
stateless: no container's disk holds the catalogue) and ``GET /api/extras`` reads the newest. An
entry becomes a job of kind ``convert`` (its ``model`` column the model it will publish);
``models.entry_hash`` records which entry a ready version was converted from, so saving the
document again converts only entries whose model is missing or was made from another entry.
``jobs_convert_idx`` lists the recent conversions without reading the image jobs. Creating a table,
adding a nullable column and a partial index on a new kind of rows take brief locks only.
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
    "CREATE INDEX jobs_convert_idx ON jobs (created_at DESC) WHERE kind = 'convert'",
)
DOWNGRADE = (
    "DROP INDEX jobs_convert_idx",
    "ALTER TABLE models DROP COLUMN entry_hash",
    "DROP TABLE extras_documents",
)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

"""The model store's registry: converted models kept in the object store, pulled by workers.

A model's files live under ``models/<name>/<content hash>/`` in the bucket; ``models`` lists them.
A row is written ``publishing`` before the first upload and turned ``ready`` after the last, so a
half-published model is never offered; ``deleting`` marks a version whose objects are being
removed (a newer one replaced it, or an admin dropped it). At most one version of a name is
``ready``. ``workers.cached_models`` is what each worker holds in its local pull cache, for the
admin's worker status; ``jobs.loading`` is what a running job's worker is pulling before the
chain can start (``{model, current, total}`` in bytes), NULL otherwise.
Creating a table and adding nullable or defaulted columns take brief locks only.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0010"
down_revision = "0009"

UPGRADE = (
    "CREATE TYPE model_state AS ENUM ('publishing', 'ready', 'deleting')",
    """
    CREATE TABLE models (
        name text NOT NULL CHECK (name <> ''),
        content_hash text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
        kind text NOT NULL CHECK (
            kind IN (
                'diffusion', 'correction', 'upscaling', 'text', 'safety', 'control', 'inversion', 'lora'
            )
        ),
        family text,
        path text NOT NULL CHECK (path <> ''),
        size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
        files jsonb NOT NULL CHECK (jsonb_typeof(files) = 'array' AND jsonb_array_length(files) > 0),
        labels jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
        state model_state NOT NULL DEFAULT 'publishing',
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (name, content_hash)
    )
    """,
    "COMMENT ON TABLE models IS 'the model store registry: one row per published version; written by service/jobs'",
    "COMMENT ON COLUMN models.path IS 'where the model sits below a models folder: a folder, or a file'",
    "COMMENT ON COLUMN models.files IS '[{path, sha256, size}], paths relative to the models folder'",
    "CREATE UNIQUE INDEX models_one_ready_idx ON models (name) WHERE state = 'ready'",
    "ALTER TABLE workers ADD COLUMN cached_models jsonb NOT NULL DEFAULT '[]'",
    "COMMENT ON COLUMN workers.cached_models IS 'models in the worker''s pull cache, most recently used first'",
    "ALTER TABLE jobs ADD COLUMN loading jsonb",
    "COMMENT ON COLUMN jobs.loading IS 'the model a running job''s worker is pulling: {model, current, total}'",
)
DOWNGRADE = (
    "ALTER TABLE jobs DROP COLUMN loading",
    "ALTER TABLE workers DROP COLUMN cached_models",
    "DROP TABLE models",
    "DROP TYPE model_state",
)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

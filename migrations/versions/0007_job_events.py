"""Job events pushed: server-sent events of progress, and callbacks when a job ends.

A trigger notifies ``onnx_web_job_events`` with a job's name whenever its state or progress
changes: ``GET /api/job/events`` listens on that channel, so a client learns of each progress
write and of the end of its jobs as they happen instead of polling. Heartbeats and lease renewals
change neither, so they notify nothing.

``jobs.callback`` is the URL a submission asked to be called when its job ends; a second trigger
writes one ``callbacks`` row (an outbox) in the same transaction as the job's terminal state, so
no ending is ever missed, whoever ended it (worker, cancel, rescue). The api delivers the rows.
Adding a nullable column and triggers takes brief locks only.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0007"
down_revision = "0006"

UPGRADE = (
    """
    CREATE FUNCTION jobs_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('onnx_web_job_events', NEW.name);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_notify_on_change AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (
        OLD.state IS DISTINCT FROM NEW.state
        OR OLD.steps_current IS DISTINCT FROM NEW.steps_current
        OR OLD.stages_current IS DISTINCT FROM NEW.stages_current
        OR OLD.tiles_current IS DISTINCT FROM NEW.tiles_current
        OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
    ) EXECUTE FUNCTION jobs_notify_event()
    """,
    "ALTER TABLE jobs ADD COLUMN callback text",
    "COMMENT ON COLUMN jobs.callback IS 'URL called when the job ends (http/https, checked at submit)'",
    """
    CREATE TABLE callbacks (
        id bigserial PRIMARY KEY,
        job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        url text NOT NULL,
        attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz,
        gave_up_at timestamptz,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "COMMENT ON TABLE callbacks IS 'one delivery per ended job with a callback; written by service/jobs'",
    """
    CREATE INDEX callbacks_due_idx ON callbacks (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL
    """,
    """
    CREATE FUNCTION jobs_queue_callback() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO callbacks (job_id, url) VALUES (NEW.id, NEW.callback);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_callback_on_end AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (
        NEW.callback IS NOT NULL
        AND NEW.state IN ('success', 'failed', 'cancelled')
        AND OLD.state IS DISTINCT FROM NEW.state
    ) EXECUTE FUNCTION jobs_queue_callback()
    """,
)
DOWNGRADE = (
    "DROP TRIGGER jobs_callback_on_end ON jobs",
    "DROP FUNCTION jobs_queue_callback()",
    "DROP TABLE callbacks",
    "ALTER TABLE jobs DROP COLUMN callback",
    "DROP TRIGGER jobs_notify_on_change ON jobs",
    "DROP FUNCTION jobs_notify_event()",
)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

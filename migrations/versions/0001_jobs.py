"""Create the jobs table: its state enum, the constraints that tie columns to states, and wake-ups.

The state machine is drawn in ``docs/state-machine.md``; change both together.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0001"
down_revision = None

UPGRADE = (
    "CREATE TYPE job_state AS ENUM ('pending', 'running', 'success', 'failed', 'cancelled')",
    """
    COMMENT ON TYPE job_state IS 'Job lifecycle; every transition is one statement in service/jobs/queries.sql.
    pending -> running (claim_batch);
    pending -> cancelled (cancel_job);
    running -> success (finish_success, only for the attempt that holds the row);
    running -> pending (finish_failed retryable with attempts left; release_job; rescue_expired with attempts left);
    running -> failed (finish_failed not retryable or out of attempts; rescue_expired out of attempts);
    running -> cancelled (finish_cancelled after cancel_requested; finish_failed, release_job or rescue_expired of a cancel-requested job).
    success, failed and cancelled are terminal.'
    """,
    """
    CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        name text NOT NULL CONSTRAINT jobs_name_key UNIQUE,
        owner text NOT NULL DEFAULT 'anonymous',
        idempotency_key text,
        request_hash text,
        kind text NOT NULL,
        state job_state NOT NULL DEFAULT 'pending',
        priority integer NOT NULL DEFAULT 0,
        model text,
        platform text,
        chain jsonb NOT NULL,
        inputs jsonb NOT NULL DEFAULT '{}',
        attempt integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL,
        worker_id text,
        lease_expires_at timestamptz,
        heartbeat_at timestamptz,
        steps_current integer NOT NULL DEFAULT 0,
        steps_total integer NOT NULL DEFAULT 0,
        stages_current integer NOT NULL DEFAULT 0,
        stages_total integer NOT NULL DEFAULT 0,
        tiles_current integer NOT NULL DEFAULT 0,
        tiles_total integer NOT NULL DEFAULT 0,
        outputs jsonb,
        thumbnails jsonb,
        metadata jsonb,
        output_keys jsonb,
        reason text,
        errors jsonb NOT NULL DEFAULT '[]',
        rescue_count integer NOT NULL DEFAULT 0,
        cancel_requested boolean NOT NULL DEFAULT false,
        request_id text,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        -- A lease exists exactly while a worker holds the job; rescue looks for expired ones.
        CONSTRAINT jobs_lease_iff_running CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
        CONSTRAINT jobs_running_is_claimed CHECK (
            state <> 'running' OR (worker_id IS NOT NULL AND started_at IS NOT NULL AND attempt >= 1)
        ),
        CONSTRAINT jobs_pending_is_unowned CHECK (state <> 'pending' OR worker_id IS NULL),
        -- A pending job can always be claimed (attempt + 1 stays in range), and a cancel request
        -- never waits in the queue: cancelling a pending job ends it at once.
        CONSTRAINT jobs_pending_is_claimable CHECK (
            state <> 'pending' OR (attempt < max_attempts AND NOT cancel_requested)
        ),
        CONSTRAINT jobs_finished_iff_terminal CHECK (
            (state IN ('success', 'failed', 'cancelled')) = (finished_at IS NOT NULL)
        ),
        CONSTRAINT jobs_success_has_outputs CHECK (
            state <> 'success' OR (outputs IS NOT NULL AND output_keys IS NOT NULL AND metadata IS NOT NULL)
        ),
        CONSTRAINT jobs_failed_has_reason CHECK (state <> 'failed' OR reason IS NOT NULL),
        CONSTRAINT jobs_attempt_in_range CHECK (attempt >= 0 AND attempt <= max_attempts),
        CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
        CONSTRAINT jobs_counters_not_negative CHECK (
            steps_current >= 0 AND steps_total >= 0 AND stages_current >= 0 AND stages_total >= 0
            AND tiles_current >= 0 AND tiles_total >= 0 AND rescue_count >= 0
        ),
        CONSTRAINT jobs_json_shapes CHECK (
            jsonb_typeof(chain) = 'object' AND jsonb_typeof(inputs) = 'object' AND jsonb_typeof(errors) = 'array'
        )
    )
    """,
    "COMMENT ON TABLE jobs IS 'One row per submitted job; written only by service/jobs/store.py'",
    "COMMENT ON COLUMN jobs.attempt IS 'Claims so far, minus graceful releases; a worker''s writes are fenced by (worker_id, attempt)'",
    "COMMENT ON COLUMN jobs.lease_expires_at IS 'A running job whose lease passed is rescued by any live process'",
    "COMMENT ON COLUMN jobs.request_hash IS 'sha256 of the submitted request: an idempotency key reused with another body is refused'",
    "COMMENT ON COLUMN jobs.output_keys IS 'Output file name -> object key, recorded only by the attempt that succeeded'",
    "COMMENT ON COLUMN jobs.errors IS 'One entry per failed or rescued attempt: attempt, worker, at, reason, message'",
    # The claim walks this index; it holds only the queue, not the history.
    "CREATE INDEX jobs_claim_idx ON jobs (priority DESC, created_at) WHERE state = 'pending'",
    "CREATE INDEX jobs_rescue_idx ON jobs (lease_expires_at) WHERE state = 'running'",
    "CREATE INDEX jobs_created_at_idx ON jobs (created_at)",
    """
    CREATE UNIQUE INDEX jobs_owner_idempotency_key_idx ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL
    """,
    # Idle workers LISTEN on onnx_web_jobs; the payload is the model, so a worker could tell
    # whether the new job suits it. Workers poll too: connection poolers drop LISTEN.
    """
    CREATE FUNCTION jobs_notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('onnx_web_jobs', coalesce(NEW.model, ''));
        RETURN NULL;
    END;
    $$
    """,
    """
    CREATE TRIGGER jobs_notify_on_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION jobs_notify_pending()
    """,
    """
    CREATE TRIGGER jobs_notify_on_requeue AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'pending' AND OLD.state <> 'pending') EXECUTE FUNCTION jobs_notify_pending()
    """,
)

DOWNGRADE = (
    "DROP TABLE jobs",
    "DROP FUNCTION jobs_notify_pending()",
    "DROP TYPE job_state",
)


upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)

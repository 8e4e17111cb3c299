-- name: insert_job
-- Add a pending job; inserts nothing when the name or the (owner, idempotency key) is taken.
INSERT INTO jobs (
    id, name, owner, idempotency_key, request_hash, kind, priority, model, platform,
    chain, inputs, max_attempts, request_id, steps_total, stages_total, tiles_total, memory, callback
) VALUES (
    :id, :name, :owner, :idempotency_key, :request_hash, :kind, :priority, :model, :platform,
    CAST(:chain AS jsonb), CAST(:inputs AS jsonb), :max_attempts, :request_id,
    :steps_total, :stages_total, :tiles_total, CAST(:memory AS jsonb), :callback
)
-- No conflict target: a concurrent twin makes this wait for the twin's commit, then the
-- caller reads the winner (select_conflicting_job) instead of failing.
ON CONFLICT DO NOTHING
RETURNING id;

-- name: select_conflicting_job
-- The job that took an insert's idempotency key (preferred) or its name.
SELECT name, owner, request_hash, (owner = :owner AND idempotency_key = :idempotency_key) IS TRUE AS same_key
FROM jobs
WHERE (owner = :owner AND idempotency_key = :idempotency_key) OR name = :name
ORDER BY same_key DESC
LIMIT 1;

-- name: select_keyed_job
-- The job an owner's earlier submission with this idempotency key made, if any.
SELECT name, request_hash FROM jobs WHERE owner = :owner AND idempotency_key = :idempotency_key;

-- name: lock_owner_submissions
-- Serialise one owner's submissions for the rest of the transaction (its running-jobs limit is
-- counted and the job inserted under it); other owners are not held up.
SELECT pg_advisory_xact_lock(hashtextextended(:owner, 0));

-- name: select_jobs
-- Jobs by name with their queue position (0-based, claim order) and the queue length, in one round trip.
-- Ranking reads every pending row, so it runs only when a requested job is pending: GUIs mostly poll
-- running and finished jobs, and their answers show no queue (Postgres skips the scan as a one-time
-- filter; queue_total is then 0).
WITH queue AS (
    SELECT id, row_number() OVER (ORDER BY priority DESC, created_at, id) - 1 AS position
    FROM jobs
    WHERE state = 'pending' AND EXISTS (
        SELECT 1 FROM jobs AS wanted
        WHERE wanted.name = ANY(CAST(:names AS text[])) AND wanted.state = 'pending'
    )
)
SELECT
    jobs.id, jobs.name, jobs.kind, jobs.state, queue.position AS queue_position,
    (SELECT count(*) FROM queue) AS queue_total,
    jobs.steps_current, jobs.steps_total, jobs.stages_current, jobs.stages_total,
    jobs.tiles_current, jobs.tiles_total,
    jobs.outputs, jobs.thumbnails, jobs.metadata, jobs.output_keys, jobs.reason,
    jobs.cancel_requested, jobs.attempt, jobs.max_attempts, jobs.model,
    jobs.created_at, jobs.started_at, jobs.finished_at, jobs.loading, jobs.preview, jobs.retry_at,
    jobs.errors -> -1 ->> 'reason' AS last_error
FROM jobs
LEFT JOIN queue ON queue.id = jobs.id
-- With an :owner (keys mode), another owner's job is as if it did not exist.
WHERE jobs.name = ANY(CAST(:names AS text[])) AND (CAST(:owner AS text) IS NULL OR jobs.owner = :owner);

-- name: select_existing_names
-- Which of these job names have a row, in any state (the orphan collector keeps their inputs).
SELECT name FROM jobs WHERE name = ANY(CAST(:names AS text[]));

-- name: select_owner_jobs
-- A page of an owner's job names, newest first, optionally of one state; keyset-paged by
-- (created_at, id) below the cursor. Asks for :limit + 1 rows: the extra one says there is more.
SELECT name, created_at, id
FROM jobs
WHERE owner = :owner
    AND (CAST(:state AS job_state) IS NULL OR state = CAST(:state AS job_state))
    AND (CAST(:before_at AS timestamptz) IS NULL
        OR (created_at, id) < (CAST(:before_at AS timestamptz), CAST(:before_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT CAST(:limit AS integer) + 1;

-- name: select_output_key
-- The object key a succeeded job recorded for one of its output file names; no row for any other job.
SELECT output_keys ->> CAST(:filename AS text) AS key
FROM jobs
WHERE name = :name AND state = 'success' AND (CAST(:owner AS text) IS NULL OR owner = :owner);

-- name: count_pending
-- Number of jobs waiting in the queue (what the autoscaler scales on).
SELECT count(*) FROM jobs WHERE state = 'pending';

-- name: queue_summary
-- Unfinished jobs by state and model, with the oldest one's age (the metrics' queue gauges).
SELECT state, model, count(*) AS jobs, EXTRACT(EPOCH FROM now() - min(created_at))::float AS oldest_age_s
FROM jobs
WHERE state IN ('pending', 'running')
GROUP BY state, model
ORDER BY state, model;

-- name: cancel_job
-- Cancel by name: a pending job ends now, a running one is flagged for its worker; returns the state.
WITH changed AS (
    UPDATE jobs SET
        -- pending -> cancelled: no worker holds it, so it ends here and never runs.
        state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state = 'pending' THEN now() ELSE finished_at END,
        reason = CASE WHEN state = 'pending' THEN 'cancelled' ELSE reason END,
        retry_at = NULL,
        -- running stays running: only the lease holder may end it, at its next check.
        cancel_requested = cancel_requested OR state = 'running',
        updated_at = now()
    WHERE name = :name AND state IN ('pending', 'running')
        AND (CAST(:owner AS text) IS NULL OR owner = :owner)
    RETURNING state
)
SELECT state, TRUE AS changed FROM changed
UNION ALL
-- Terminal (or already moved on): unchanged, report it as it is.
SELECT state, FALSE AS changed FROM jobs
WHERE name = :name AND (CAST(:owner AS text) IS NULL OR owner = :owner) AND NOT EXISTS (SELECT 1 FROM changed);

-- name: claim_batch
-- Claim the next job for a worker (priority, then jobs past the affinity window, then held models, then
-- age), plus up to :batch_max - 1 pending jobs with its batch_key; :batch_max 1 claims one job.
-- A worker that announced :memory_bytes takes only jobs whose :memory_kind estimate fits in it.
-- That order is read off two indexes, never by sorting the queue: the head of the queue
-- (jobs_claim_idx), then, only while the head is inside the window, the oldest job of each held model
-- at the head's priority (jobs_model_claim_idx); the first of these few candidates in that order wins.
WITH head AS MATERIALIZED (
    SELECT id, batch_key, model, created_at, priority
    FROM jobs
    WHERE state = 'pending' AND (platform IS NULL OR platform = :platform)
        -- A job put back after a failure waits out its backoff (finish_failed, rescue_expired).
        AND (retry_at IS NULL OR retry_at <= now())
        AND (CAST(:memory_bytes AS bigint) IS NULL OR memory IS NULL
            OR CAST(memory ->> CAST(:memory_kind AS text) AS bigint) <= CAST(:memory_bytes AS bigint))
    ORDER BY priority DESC, created_at, id
    LIMIT 1
    -- Concurrent claimers skip each other's rows instead of queueing on the lock. A candidate this
    -- claim locks but does not take is skipped by the others only until this claim commits.
    FOR UPDATE SKIP LOCKED
),
held AS MATERIALIZED (
    SELECT candidate.id, candidate.batch_key, candidate.model, candidate.created_at, candidate.priority
    FROM head
    CROSS JOIN unnest(CAST(:held_models AS text[])) AS held_model (model)
    CROSS JOIN LATERAL (
        SELECT id, batch_key, model, created_at, priority
        FROM jobs
        -- No other priority can win: none higher is pending, a lower one never outranks the head.
        -- The model as a range, not an equality, keeps the model in the ORDER BY, which only
        -- jobs_model_claim_idx yields: with "model =", the planner guesses the model's share of the
        -- queue from the number of models, and may walk the queue by age for one it never finds.
        WHERE state = 'pending' AND model >= held_model.model AND model <= held_model.model
            AND priority = head.priority
            AND (platform IS NULL OR platform = :platform)
            AND (retry_at IS NULL OR retry_at <= now())
            AND (CAST(:memory_bytes AS bigint) IS NULL OR memory IS NULL
                OR CAST(memory ->> CAST(:memory_kind AS text) AS bigint) <= CAST(:memory_bytes AS bigint))
        ORDER BY model, priority DESC, created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS candidate
    -- The head is the oldest job of its priority: past the window, it wins, and nothing is passed over.
    WHERE head.created_at >= now() - make_interval(secs => :affinity_window_s)
),
first AS (
    SELECT id, batch_key
    FROM (
        SELECT id, batch_key, model, created_at FROM head
        UNION ALL
        SELECT id, batch_key, model, created_at FROM held
    ) AS candidates
    ORDER BY
        -- A job waiting longer than the window is never passed over for a held-model one.
        CASE
            WHEN created_at < now() - make_interval(secs => :affinity_window_s) THEN 0
            WHEN model = ANY(CAST(:held_models AS text[])) THEN 1
            ELSE 2
        END,
        created_at,
        id
    LIMIT 1
),
mates AS (
    SELECT id
    FROM jobs
    -- A NULL key (not a plain txt2img job) equals nothing: such a job runs alone.
    WHERE state = 'pending' AND (platform IS NULL OR platform = :platform)
        AND (retry_at IS NULL OR retry_at <= now())
        AND batch_key = (SELECT batch_key FROM first)
        AND id <> (SELECT id FROM first)
    -- Queue order; no mate outranks the first job, which heads this worker's queue.
    ORDER BY priority DESC, created_at, id
    LIMIT CAST(:batch_max AS integer) - 1
    -- A mate another worker is claiming right now is left to it.
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    -- pending -> running, for every job of the batch: each gets its own attempt and lease,
    -- owned by this worker until the lease runs out, so each is heartbeated, fenced and finished
    -- on its own. Progress restarts with the attempt; the totals were estimated at submission.
    UPDATE jobs SET
        state = 'running',
        attempt = attempt + 1,
        worker_id = :worker_id,
        started_at = now(),
        heartbeat_at = now(),
        lease_expires_at = now() + make_interval(secs => :lease_s),
        retry_at = NULL,
        steps_current = 0,
        stages_current = 0,
        tiles_current = 0,
        updated_at = now()
    WHERE id IN (SELECT id FROM first UNION ALL SELECT id FROM mates)
    RETURNING jobs.id, jobs.name, jobs.kind, jobs.attempt, jobs.chain, jobs.inputs, jobs.model,
        jobs.max_attempts, jobs.owner, jobs.priority, jobs.created_at
)
SELECT id, name, kind, attempt, chain, inputs, model, max_attempts, owner,
    EXTRACT(EPOCH FROM now() - created_at)::float AS queued_s
FROM claimed
-- The first job first, then its mates in queue order.
ORDER BY id <> (SELECT id FROM first), priority DESC, created_at, id;

-- name: notify
-- Tell listeners about committed changes: job names on onnx_web_job_events (state or progress
-- changed), models on onnx_web_jobs (a job became pending: wake idle workers). Sent after the change
-- committed, in a transaction of its own whose commit does not wait for the disk: Postgres
-- serializes every notifying commit in the cluster on one lock held until that commit is flushed,
-- so a notification sent inside the change made every claim and completion wait for every other
-- one's WAL flush. A lost notification costs only latency: listeners also poll.
SELECT set_config('synchronous_commit', 'off', true), pg_notify(note.channel, note.payload)
FROM unnest(CAST(:channels AS text[]), CAST(:payloads AS text[])) AS note (channel, payload);

-- name: heartbeat
-- Renew the lease of a worker's attempt; no row back means the attempt lost the job.
UPDATE jobs SET
    heartbeat_at = now(),
    lease_expires_at = now() + make_interval(secs => :lease_s),
    updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
RETURNING cancel_requested;

-- name: record_progress
-- Write a worker's progress counters (fenced by worker and attempt); also a sign of life.
UPDATE jobs SET
    steps_current = :steps_current, steps_total = :steps_total,
    stages_current = :stages_current, stages_total = :stages_total,
    tiles_current = :tiles_current, tiles_total = :tiles_total,
    heartbeat_at = now(),
    updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
-- Written several times a second, it passes a cancel request on long before the next heartbeat.
RETURNING name, cancel_requested;

-- name: record_preview
-- Note (or clear, with NULL) the running attempt's live preview image (fenced by worker and attempt).
UPDATE jobs SET preview = CAST(:preview AS jsonb), updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
RETURNING name;

-- name: finish_success
-- Record the outputs of the attempt that still holds the job, or end it cancelled; returns the state.
-- A stale attempt changes nothing. running -> success; running -> cancelled when a cancel was
-- requested before this commit: the user was told the job would stop, so its outputs are never
-- recorded (the worker deletes them once this has committed).
UPDATE jobs SET
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'success' END::job_state,
    reason = CASE WHEN cancel_requested THEN 'cancelled' ELSE reason END,
    outputs = CASE WHEN cancel_requested THEN NULL ELSE CAST(:outputs AS jsonb) END,
    thumbnails = CASE WHEN cancel_requested THEN NULL ELSE CAST(:thumbnails AS jsonb) END,
    metadata = CASE WHEN cancel_requested THEN NULL ELSE CAST(:metadata AS jsonb) END,
    output_keys = CASE WHEN cancel_requested THEN NULL ELSE CAST(:output_keys AS jsonb) END,
    steps_current = :steps_current, steps_total = :steps_total,
    stages_current = :stages_current, stages_total = :stages_total,
    tiles_current = :tiles_current, tiles_total = :tiles_total,
    lease_expires_at = NULL,
    finished_at = now(),
    updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
RETURNING name, state, model;

-- name: finish_failed
-- End a failed attempt: back to the queue if retryable with attempts left, else failed; returns the state.
WITH ended AS (
    SELECT
        id,
        CASE
            -- running -> cancelled: the user asked to stop it, and the error was not final
            -- (as rescue_expired does for a cancel-requested job).
            WHEN CAST(:retryable AS boolean) AND cancel_requested THEN 'cancelled'
            -- running -> pending: retry on another (or the same) worker.
            WHEN CAST(:retryable AS boolean) AND attempt < max_attempts THEN 'pending'
            -- running -> failed: the error is final or the attempts are used up.
            ELSE 'failed'
        END::job_state AS next_state
    FROM jobs
    WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
    FOR UPDATE
)
UPDATE jobs SET
    state = ended.next_state,
    worker_id = CASE WHEN ended.next_state = 'pending' THEN NULL ELSE jobs.worker_id END,
    lease_expires_at = NULL,
    reason = CASE ended.next_state
        WHEN 'failed' THEN CAST(:reason AS text) WHEN 'cancelled' THEN 'cancelled' END,
    finished_at = CASE WHEN ended.next_state = 'pending' THEN NULL ELSE now() END,
    -- Back in the queue, claimable once its backoff has passed (job_retry_delay, migration 0015).
    retry_at = CASE WHEN ended.next_state = 'pending'
        THEN now() + job_retry_delay(jobs.attempt, CAST(:retry_first_s AS float8), CAST(:retry_max_s AS float8))
    END,
    -- A queued job has made no progress yet; a failed one keeps how far it got.
    steps_current = CASE WHEN ended.next_state = 'pending' THEN 0 ELSE jobs.steps_current END,
    stages_current = CASE WHEN ended.next_state = 'pending' THEN 0 ELSE jobs.stages_current END,
    tiles_current = CASE WHEN ended.next_state = 'pending' THEN 0 ELSE jobs.tiles_current END,
    errors = jobs.errors || jsonb_build_array(jsonb_build_object(
        'attempt', jobs.attempt, 'worker', jobs.worker_id, 'at', now(),
        'reason', CAST(:reason AS text), 'message', CAST(:message AS text)
    )),
    updated_at = now()
FROM ended
WHERE jobs.id = ended.id
RETURNING jobs.state, jobs.name, jobs.model;

-- name: finish_cancelled
-- End a running job whose cancel was requested, once its worker has stopped.
-- running -> cancelled.
UPDATE jobs SET
    state = 'cancelled',
    reason = 'cancelled',
    lease_expires_at = NULL,
    finished_at = now(),
    updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
    AND cancel_requested
RETURNING name, state, model;

-- name: release_job
-- Hand a job back on graceful shutdown without spending an attempt or recording an error.
UPDATE jobs SET
    -- running -> pending, or running -> cancelled when a cancel is already waiting for it.
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END::job_state,
    -- The attempt never ran to an outcome, so it does not count against max_attempts.
    attempt = CASE WHEN cancel_requested THEN attempt ELSE attempt - 1 END,
    worker_id = CASE WHEN cancel_requested THEN worker_id END,
    reason = CASE WHEN cancel_requested THEN 'cancelled' END,
    finished_at = CASE WHEN cancel_requested THEN now() END,
    lease_expires_at = NULL,
    steps_current = CASE WHEN cancel_requested THEN steps_current ELSE 0 END,
    stages_current = CASE WHEN cancel_requested THEN stages_current ELSE 0 END,
    tiles_current = CASE WHEN cancel_requested THEN tiles_current ELSE 0 END,
    updated_at = now()
WHERE id = :job_id AND state = 'running' AND worker_id = :worker_id AND attempt = :attempt
RETURNING name, state, model;

-- name: rescue_expired
-- Take back every running job whose lease expired (its worker died or hung), in one statement.
WITH expired AS (
    SELECT
        id,
        worker_id,
        CASE
            -- running -> cancelled: the user asked to stop it and nobody is running it now.
            WHEN cancel_requested THEN 'cancelled'
            -- running -> pending: another worker gets a fresh attempt.
            WHEN attempt < max_attempts THEN 'pending'
            -- running -> failed: every attempt died; retrying forever would crash workers forever.
            ELSE 'failed'
        END::job_state AS next_state
    FROM jobs
    WHERE state = 'running' AND lease_expires_at < now()
    -- A row being heartbeated right now is skipped: its lease is about to be renewed.
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET
    state = expired.next_state,
    worker_id = CASE WHEN expired.next_state = 'pending' THEN NULL ELSE jobs.worker_id END,
    lease_expires_at = NULL,
    reason = CASE expired.next_state
        WHEN 'failed' THEN 'rescued' WHEN 'cancelled' THEN 'cancelled' END,
    finished_at = CASE WHEN expired.next_state = 'pending' THEN NULL ELSE now() END,
    -- The first rescue is claimable at once (a worker mostly dies of its own causes: a node taken
    -- away, a kill); a job rescued again may be what kills its workers, so it backs off as a failed
    -- attempt does, one step behind.
    retry_at = CASE WHEN expired.next_state = 'pending' AND jobs.attempt > 1
        THEN now() + job_retry_delay(jobs.attempt - 1, CAST(:retry_first_s AS float8), CAST(:retry_max_s AS float8))
    END,
    steps_current = CASE WHEN expired.next_state = 'pending' THEN 0 ELSE jobs.steps_current END,
    stages_current = CASE WHEN expired.next_state = 'pending' THEN 0 ELSE jobs.stages_current END,
    tiles_current = CASE WHEN expired.next_state = 'pending' THEN 0 ELSE jobs.tiles_current END,
    rescue_count = jobs.rescue_count + 1,
    errors = jobs.errors || jsonb_build_array(jsonb_build_object(
        'attempt', jobs.attempt, 'worker', jobs.worker_id, 'at', now(),
        'reason', 'rescued', 'message', 'lease expired: the worker stopped sending heartbeats'
    )),
    updated_at = now()
FROM expired
WHERE jobs.id = expired.id
RETURNING jobs.id, jobs.name, jobs.state, jobs.attempt, expired.worker_id, jobs.model;

-- name: announce_worker
-- Insert or refresh a worker's row (a sign of life); returns whether an admin asked it to restart.
INSERT INTO workers (
    id, platform, device, memory_bytes, providers, models, version, jobs_done, started_at, seen_at
) VALUES (
    :id, :platform, :device, :memory_bytes, CAST(:providers AS jsonb), CAST(:models AS jsonb), :version,
    :jobs_done, now(), now()
)
ON CONFLICT (id) DO UPDATE SET
    platform = EXCLUDED.platform,
    device = EXCLUDED.device,
    memory_bytes = EXCLUDED.memory_bytes,
    providers = EXCLUDED.providers,
    models = EXCLUDED.models,
    version = EXCLUDED.version,
    jobs_done = EXCLUDED.jobs_done,
    seen_at = now()
RETURNING restart_requested;

-- name: retire_worker
-- Remove a worker's row when it stops cleanly.
DELETE FROM workers WHERE id = :id;

-- name: select_live_workers
-- Workers seen within the last :max_age_s seconds, oldest first.
SELECT id, platform, device, memory_bytes, providers, models, version, jobs_done, started_at, seen_at
FROM workers
WHERE seen_at > now() - make_interval(secs => :max_age_s)
ORDER BY started_at;

-- name: request_restart
-- Ask every live worker to exit after its current job (its supervisor starts a fresh one).
UPDATE workers SET restart_requested = true
WHERE seen_at > now() - make_interval(secs => :max_age_s);

-- name: forget_stale_workers
-- Delete rows of workers not seen for :max_age_s seconds (they crashed or were killed).
DELETE FROM workers WHERE seen_at < now() - make_interval(secs => :max_age_s);

-- name: select_held_by_worker
-- The running attempts a worker holds (a supervisor asks after the worker died).
SELECT id, name, attempt FROM jobs WHERE state = 'running' AND worker_id = :worker_id ORDER BY id;

-- name: select_active_jobs
-- The running then pending jobs (at most :limit), for the admin's worker status.
SELECT name, state, steps_current, steps_total
FROM jobs
WHERE state IN ('running', 'pending')
ORDER BY state DESC, priority DESC, created_at
LIMIT :limit;

-- name: insert_key
-- Add an API key (by its hash) with its owner and limits.
INSERT INTO api_keys (id, owner, key_hash, admin, max_running, rate_per_min, pixel_steps_per_day)
VALUES (:id, :owner, :key_hash, :admin, :max_running, :rate_per_min, :pixel_steps_per_day);

-- name: select_key_by_hash
-- The key a request presents, revoked or not; its last use is recorded at most once a minute.
WITH touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE key_hash = :key_hash AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT id, owner, admin, max_running, rate_per_min, pixel_steps_per_day, revoked_at IS NOT NULL AS revoked
FROM api_keys
WHERE key_hash = :key_hash;

-- name: select_keys
-- Every key with its limits and today's usage, oldest first (never the hash).
SELECT k.id, k.owner, k.admin, k.max_running, k.rate_per_min, k.pixel_steps_per_day, k.created_at,
    k.revoked_at, k.last_used_at, COALESCE(u.amount, 0) AS pixel_steps_today
FROM api_keys k
LEFT JOIN key_usage u ON u.key_id = k.id AND u.period = 'day' AND u.starts_at = date_trunc('day', now())
ORDER BY k.created_at, k.id;

-- name: revoke_key
-- Revoke a key for good; returns its id when it existed and was live.
UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL RETURNING id;

-- name: count_owner_active
-- How many jobs an owner has pending or running (its max_running quota).
-- Unfinished is pending or running (jobs_finished_iff_terminal); jobs_owner_active_idx answers it.
SELECT count(*) FROM jobs WHERE owner = :owner AND finished_at IS NULL;

-- name: use_quota
-- Add :amount to a key's counter for the current :period ('minute' or 'day') unless that would pass
-- :limit; returns the new total, or no row when the limit would be passed (nothing is added then).
-- A key's counters older than two days are dropped on the way.
WITH window_start AS (
    SELECT date_trunc(CAST(:period AS text), now()) AS starts_at
),
forgotten AS (
    DELETE FROM key_usage WHERE key_id = :key_id AND starts_at < now() - interval '2 days'
)
INSERT INTO key_usage AS usage (key_id, period, starts_at, amount)
SELECT :key_id, :period, starts_at, :amount FROM window_start WHERE :amount <= :limit
ON CONFLICT (key_id, period, starts_at) DO UPDATE SET amount = usage.amount + EXCLUDED.amount
WHERE usage.amount + EXCLUDED.amount <= :limit
RETURNING amount;

-- name: claim_callbacks
-- Take up to :limit due deliveries for one try each: the try is counted and the row hidden from
-- other dispatchers for :lease_s (a dispatcher that dies mid-try leaves it due again after that).
WITH due AS (
    SELECT id FROM callbacks
    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE callbacks SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => :lease_s)
FROM due, jobs
WHERE callbacks.id = due.id AND jobs.id = callbacks.job_id
RETURNING callbacks.id, callbacks.url, callbacks.attempts, jobs.name, jobs.owner;

-- name: callback_delivered
-- A delivery the receiver accepted (2xx).
UPDATE callbacks SET delivered_at = now(), last_error = NULL WHERE id = :id;

-- name: callback_failed
-- A failed try: due again in :retry_in_s, or given up once :max_attempts tries were made.
UPDATE callbacks SET
    last_error = :error,
    next_attempt_at = now() + make_interval(secs => :retry_in_s),
    gave_up_at = CASE WHEN attempts >= :max_attempts THEN now() END
WHERE id = :id;

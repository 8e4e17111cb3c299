-- name: select_version
-- One published version of a model by name and content hash, whatever its state.
SELECT name, content_hash, variant, kind, family, path, size_bytes, files, labels, state, created_at
FROM models
WHERE name = :name AND content_hash = :content_hash;

-- name: begin_publish
-- Record a version as publishing before its first upload (a failed earlier try is taken over).
INSERT INTO models (name, content_hash, variant, kind, family, path, size_bytes, files, labels, state)
VALUES (
    :name, :content_hash, :variant, :kind, :family, :path, :size_bytes, CAST(:files AS jsonb),
    CAST(:labels AS jsonb), 'publishing'
)
ON CONFLICT (name, content_hash) DO UPDATE SET
    kind = EXCLUDED.kind,
    family = EXCLUDED.family,
    path = EXCLUDED.path,
    labels = EXCLUDED.labels,
    state = 'publishing',
    updated_at = now()
WHERE models.state <> 'ready';

-- name: retire_ready
-- publishing -> ready, step 1: the name's ready version of the same variant, if another, goes to deleting.
UPDATE models SET state = 'deleting', updated_at = now()
WHERE name = :name AND state = 'ready' AND content_hash <> :content_hash
    AND variant = (SELECT variant FROM models WHERE name = :name AND content_hash = :content_hash)
RETURNING content_hash;

-- name: mark_ready
-- publishing -> ready, step 2 (same transaction): the version is offered once every file is up.
UPDATE models SET state = 'ready', updated_at = now()
WHERE name = :name AND content_hash = :content_hash AND state = 'publishing'
RETURNING content_hash;

-- name: mark_deleting
-- ready or publishing -> deleting: an admin drops a model; workers drop their copy at next use.
UPDATE models SET state = 'deleting', updated_at = now()
WHERE name = :name AND state <> 'deleting'
RETURNING content_hash;

-- name: delete_version
-- Forget a deleting version once its objects are gone.
DELETE FROM models WHERE name = :name AND content_hash = :content_hash AND state = 'deleting';

-- name: select_deleting
-- Versions whose objects are still to be removed, oldest first.
SELECT name, content_hash FROM models WHERE state = 'deleting' ORDER BY updated_at;

-- name: select_ready
-- Every model a job may name, by kind then name: one row per name, its fp32 variant if it has one.
SELECT * FROM (
    SELECT DISTINCT ON (name)
        name, content_hash, variant, kind, family, path, size_bytes, files, labels, state, created_at
    FROM models
    WHERE state = 'ready'
    ORDER BY name, variant = 'fp32' DESC
) AS listed
ORDER BY kind, name;

-- name: select_listed
-- Every version in every state, for the admin: by kind, name, newest first.
SELECT name, content_hash, variant, kind, family, path, size_bytes, files, labels, state, created_at
FROM models
ORDER BY kind, name, variant, created_at DESC;

-- name: select_ready_model
-- The ready version of a model a worker of :variant pulls: its own variant if there is one, else
-- fp32 (which every worker runs); by the model's name, its path below a models folder, or
-- <kind>/<name> (a prompt's <lora:name:w> asks for lora/name).
SELECT name, content_hash, variant, kind, family, path, size_bytes, files, labels, state, created_at
FROM models
WHERE state = 'ready' AND (name = :name OR path = :name OR kind || '/' || name = :name)
    AND variant IN ('fp32', :variant)
ORDER BY name = :name DESC, variant = :variant DESC
LIMIT 1;

-- name: record_worker_cache
-- The models in a worker's pull cache, most recently used first (for the admin's worker status).
UPDATE workers SET cached_models = CAST(:models AS jsonb) WHERE id = :id;

-- name: record_loading
-- What a running job's worker is pulling (NULL once the chain starts); fenced by worker and attempt.
UPDATE jobs SET loading = CAST(:loading AS jsonb), updated_at = now()
WHERE id = :job_id AND worker_id = :worker_id AND attempt = :attempt AND state = 'running';

-- name: select_worker_status
-- Workers seen within :max_age_s seconds with their heartbeat age and the job each one runs.
SELECT w.id, w.platform, w.device, w.models, w.cached_models, w.jobs_done, w.started_at,
    EXTRACT(EPOCH FROM now() - w.seen_at)::float AS heartbeat_age_s,
    running.name AS job, running.loading AS loading
FROM workers w
LEFT JOIN LATERAL (
    SELECT j.name, j.loading FROM jobs j
    WHERE j.state = 'running' AND j.worker_id = w.id
    ORDER BY j.started_at DESC NULLS LAST
    LIMIT 1
) running ON true
WHERE w.seen_at > now() - make_interval(secs => :max_age_s)
ORDER BY w.started_at, w.id;

-- name: ready_entry_hashes
-- The entry each of the named models' ready version was converted from (NULL: published by hand).
SELECT name, entry_hash FROM models WHERE state = 'ready' AND name = ANY(CAST(:names AS text[]));

-- name: set_entry_hash
-- Record which entry a ready version was converted from (a publish of unchanged content included).
UPDATE models SET entry_hash = :entry_hash, updated_at = now()
WHERE name = :name AND content_hash = :content_hash AND state = 'ready';

-- name: jobs_needing_model
-- How many waiting or running jobs name a model, as their model or a stage's model parameter.
SELECT count(*) AS jobs
FROM jobs
WHERE state IN ('pending', 'running') AND kind <> 'convert'
    AND (model = :name OR jsonb_path_exists(
        chain,
        '$.stages[*].params ? (@.model == $n || @.upscale_model == $n || @.correction_model == $n)',
        jsonb_build_object('n', CAST(:name AS text))
    ));

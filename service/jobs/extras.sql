-- name: insert_document
-- Store an accepted extras document; the newest version is the current one.
INSERT INTO extras_documents (document, text, sha256, created_by)
VALUES (CAST(:document AS jsonb), :text, :sha256, :created_by)
RETURNING version, created_at;

-- name: latest_document
-- The current extras document, if any was ever stored.
SELECT version, document, text, created_at
FROM extras_documents
ORDER BY version DESC
LIMIT 1;

-- name: latest_version
-- The current document's version alone (the api's cheap check for a newer one).
SELECT max(version) AS version FROM extras_documents;

-- name: active_conversions
-- Conversions of the named models still waiting or running, with the entry each converts.
SELECT name AS job, model, chain -> 'convert' ->> 'entry_hash' AS entry_hash
FROM jobs
WHERE kind = 'convert' AND state IN ('pending', 'running') AND model = ANY(CAST(:names AS text[]));

-- name: recent_conversions
-- The newest conversion jobs, for the admin's Models tab (jobs_convert_idx).
SELECT name AS job, model, state, chain -> 'convert' ->> 'section' AS section, loading,
    stages_current, stages_total, steps_current, steps_total, reason, created_at, updated_at
FROM jobs
WHERE kind = 'convert'
ORDER BY created_at DESC
LIMIT :limit;

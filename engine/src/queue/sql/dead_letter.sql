-- Exhausted or fatal runs: moved to dead_letters in one statement (so in one transaction) with the
-- whole error history. Fenced as in retry.sql.
WITH moved AS (
    DELETE FROM chainsync.jobs j
    USING unnest($1::uuid[], $3::jsonb[], $4::text[]) AS d(id, error, reason)
    WHERE j.id = ANY($1::uuid[]) AND j.id = d.id
      AND (j.id::text || '/' || j.attempt || '/' || j.lease_owner) = ANY($2::text[])
    RETURNING j.*, d.error AS last_error, d.reason
)
INSERT INTO chainsync.dead_letters (id, kind, queue, args, priority, attempt, max_attempts,
    backoff_base_ms, backoff_cap_ms, unique_key, errors, reason, created_at)
SELECT id, kind, queue, args, priority, attempt, max_attempts, backoff_base_ms, backoff_cap_ms,
       unique_key, errors || jsonb_build_array(last_error), reason, created_at
FROM moved
ON CONFLICT (id) DO UPDATE
SET errors = EXCLUDED.errors, attempt = EXCLUDED.attempt, reason = EXCLUDED.reason,
    args = EXCLUDED.args, failed_at = now()

-- Exhausted or fatal runs: moved to dead_letters in one statement (so in one transaction) with the
-- whole error history (chainsync.bury), the last entry with the attempt's start. Fenced as in
-- retry.sql. One row per job moved.
WITH moved AS (
    DELETE FROM chainsync.jobs j
    USING unnest($1::uuid[], $3::jsonb[], $4::text[]) AS d(id, error, reason)
    WHERE j.id = ANY($1::uuid[]) AND j.id = d.id
      AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY($2::text[])
    RETURNING j AS job, d.error || jsonb_build_object('started_at', j.started_at) AS last_error, d.reason
)
SELECT chainsync.bury(job, last_error, reason) FROM moved

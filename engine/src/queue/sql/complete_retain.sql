-- Successful runs, finished jobs retained until the pruner drops their range: moved to
-- chainsync.finished_jobs (partitioned by finish time). Fenced as in complete_delete.sql; one row
-- inserted per job completed. The column list is chainsync.finish_jobs' (migration
-- 20261201000000_finished_jobs.sql), the outcome written in.
WITH m AS (
    DELETE FROM chainsync.jobs j
    WHERE j.id = ANY($1::uuid[])
      AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY($2::text[])
    RETURNING j.*
)
INSERT INTO chainsync.finished_jobs
SELECT id, kind, queue, args, priority, 'completed', attempt, max_attempts, backoff_base_ms,
       backoff_cap_ms, run_at, NULL, NULL, unique_key, errors, created_at, started_at, now(),
       unique_while_running, traceparent
FROM m

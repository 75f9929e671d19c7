-- Jobs whose lease ran out (worker killed, partitioned or stuck): those with attempts left go back
-- to 'available' now; the others are dead-lettered as exhausted. The lost attempt is recorded.
-- Rows are found by primary key (`id = ANY(…)`), never by a join the planner could turn into a
-- scan of the whole table.
WITH lost AS MATERIALIZED (
    SELECT id, attempt >= max_attempts AS exhausted,
           jsonb_build_object('attempt', attempt, 'at', now(), 'class', 'lease_expired',
                              'error', 'lease expired: worker lost or stuck',
                              'started_at', started_at) AS error
    FROM chainsync.jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
requeued AS (
    UPDATE chainsync.jobs j
    SET state = 'available', run_at = now(), lease_owner = NULL, lease_expires_at = NULL,
        errors = j.errors || jsonb_build_array(lost.error)
    FROM lost
    WHERE j.id = ANY(ARRAY(SELECT id FROM lost WHERE NOT exhausted)) AND j.id = lost.id
    RETURNING j.id
),
moved AS (
    DELETE FROM chainsync.jobs j
    USING lost
    WHERE j.id = ANY(ARRAY(SELECT id FROM lost WHERE exhausted)) AND j.id = lost.id
    RETURNING j AS job, lost.error AS last_error
),
dead AS (
    SELECT chainsync.bury(job, last_error, 'exhausted') AS id FROM moved
)
SELECT (SELECT count(*) FROM requeued) AS requeued, (SELECT count(*) FROM dead) AS dead

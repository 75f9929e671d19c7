-- Take up to $2 runnable jobs of queue $1 for worker $3, leased for $4 milliseconds.
-- SKIP LOCKED lets any number of workers fetch concurrently without waiting on each other; the
-- attempt bump plus lease_owner is the fencing token a completion must present.
WITH picked AS (
    SELECT id FROM chainsync.jobs
    WHERE state = 'available' AND queue = $1 AND run_at <= now()
    ORDER BY priority, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE chainsync.jobs j
SET state = 'running',
    attempt = j.attempt + 1,
    lease_owner = $3,
    lease_expires_at = now() + make_interval(secs => $4::double precision / 1000),
    started_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.backoff_base_ms, j.backoff_cap_ms

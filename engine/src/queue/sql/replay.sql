-- Move dead letters back to the queue: attempts reset, history and traceparent kept, runnable
-- now. Selected by ids ($1) or by kind ($2) / failed since ($3). A dead letter whose unique key a job holds (see
-- chainsync.unique_holder) is left in place (the insert skips it, so the delete does too):
-- nothing is lost either way.
WITH picked AS (
    SELECT d.* FROM chainsync.dead_letters d
    WHERE ($1::uuid[] IS NULL OR d.id = ANY($1))
      AND ($2::text IS NULL OR d.kind = $2)
      AND ($3::timestamptz IS NULL OR d.failed_at >= $3)
    ORDER BY d.failed_at, d.id
    FOR UPDATE SKIP LOCKED
),
inserted AS (
    INSERT INTO chainsync.jobs (id, kind, queue, args, priority, attempt, max_attempts,
        backoff_base_ms, backoff_cap_ms, unique_key, errors, run_at, created_at,
        unique_while_running, traceparent)
    SELECT id, kind, queue, args, priority, 0, max_attempts, backoff_base_ms, backoff_cap_ms,
           unique_key, errors, now(), created_at,
           coalesce((SELECT k.unique_while_running FROM chainsync.kinds k WHERE k.kind = picked.kind), false),
           traceparent
    FROM picked
    ON CONFLICT DO NOTHING
    RETURNING id
)
DELETE FROM chainsync.dead_letters d USING inserted WHERE d.id = inserted.id
RETURNING d.id

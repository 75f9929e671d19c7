-- Moving a job into the dead letters, written once: the outcome statements (dead_letter.sql) and
-- the rescuer (rescue.sql) both delete the job row and hand it here with the error of its last
-- attempt. A job dead-lettered before (then replayed) keeps its id: its entry is refreshed.
CREATE FUNCTION chainsync.bury(job chainsync.jobs, last_error jsonb, reason text) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    INSERT INTO chainsync.dead_letters (id, kind, queue, args, priority, attempt, max_attempts,
        backoff_base_ms, backoff_cap_ms, unique_key, errors, reason, created_at)
    VALUES (job.id, job.kind, job.queue, job.args, job.priority, job.attempt, job.max_attempts,
            job.backoff_base_ms, job.backoff_cap_ms, job.unique_key,
            job.errors || jsonb_build_array(last_error), reason, job.created_at)
    ON CONFLICT (id) DO UPDATE
    SET errors = EXCLUDED.errors, attempt = EXCLUDED.attempt, reason = EXCLUDED.reason,
        args = EXCLUDED.args, failed_at = now()
    RETURNING id
$$;

-- Unique keys deduplicate against jobs that have not started yet. A job that is running (or has
-- run and waits for a retry) never absorbs a new enqueue: it may have read the world before the
-- change that caused the new one. So at most one not-yet-started job holds a key, beside any
-- number of started ones.
--
-- "One active job per key" (a full sync, an ingestion pass per chain) is an explicit opt-in of a
-- kind (`chainsync.kinds.unique_while_running`), copied onto each job at insert: such a key is
-- held by the job from enqueue until it finishes, running included.
ALTER TABLE chainsync.kinds ADD COLUMN unique_while_running boolean NOT NULL DEFAULT false;
ALTER TABLE chainsync.jobs ADD COLUMN unique_while_running boolean NOT NULL DEFAULT false;

DROP INDEX chainsync.jobs_unique_active_idx;
CREATE UNIQUE INDEX jobs_unique_queued_idx ON chainsync.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = 'available' AND started_at IS NULL;
CREATE UNIQUE INDEX jobs_unique_active_idx ON chainsync.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND unique_while_running AND state IN ('available', 'running');

-- The job that holds a unique key against a new enqueue, if any (the two indexes above).
CREATE FUNCTION chainsync.unique_holder(key text) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT j.id FROM chainsync.jobs j
    WHERE j.unique_key = key
      AND ((j.state = 'available' AND j.started_at IS NULL)
           OR (j.unique_while_running AND j.state IN ('available', 'running')))
    ORDER BY j.started_at NULLS FIRST
    LIMIT 1
$$;

CREATE OR REPLACE FUNCTION chainsync.enqueue(
    kind         text,
    args         jsonb DEFAULT '{}',
    queue        text DEFAULT NULL,
    priority     smallint DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    backoff_base_ms bigint DEFAULT NULL,
    backoff_cap_ms  bigint DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k  chainsync.kinds%ROWTYPE;
    new_id uuid;
BEGIN
    SELECT * INTO k FROM chainsync.kinds WHERE kinds.kind = enqueue.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chainsync.enqueue: unknown job kind "%" (known: %)', enqueue.kind,
            (SELECT coalesce(string_agg(kinds.kind, ', ' ORDER BY kinds.kind), 'none; run chainsync migrate') FROM chainsync.kinds)
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.args IS NULL OR jsonb_typeof(enqueue.args) <> 'object' THEN
        RAISE EXCEPTION 'chainsync.enqueue: args must be a JSON object, got %', coalesce(jsonb_typeof(enqueue.args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.priority IS NULL OR enqueue.priority NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'chainsync.enqueue: priority must be between 0 and 100, got %', enqueue.priority
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.max_attempts IS NOT NULL AND enqueue.max_attempts < 1 THEN
        RAISE EXCEPTION 'chainsync.enqueue: max_attempts must be at least 1, got %', enqueue.max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.backoff_base_ms IS NOT NULL AND enqueue.backoff_base_ms < 1
       OR enqueue.backoff_cap_ms IS NOT NULL AND enqueue.backoff_cap_ms < coalesce(enqueue.backoff_base_ms, 1) THEN
        RAISE EXCEPTION 'chainsync.enqueue: backoff_base_ms must be positive and backoff_cap_ms not below it (got %, %)',
            enqueue.backoff_base_ms, enqueue.backoff_cap_ms USING ERRCODE = '22023';
    END IF;
    -- The holder of the key can start (or finish) between a conflict and the look-up: try again.
    LOOP
        INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                                    backoff_base_ms, backoff_cap_ms, unique_while_running)
        VALUES (chainsync.uuid_v7(), enqueue.kind, coalesce(enqueue.queue, k.queue), enqueue.args,
                enqueue.priority, coalesce(enqueue.max_attempts, k.max_attempts),
                coalesce(enqueue.run_at, now()), enqueue.unique_key,
                enqueue.backoff_base_ms, enqueue.backoff_cap_ms, k.unique_while_running)
        ON CONFLICT DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        new_id := chainsync.unique_holder(enqueue.unique_key);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END LOOP;
END
$$;

-- Trace context of jobs: a W3C traceparent given at enqueue is stored with the job, carried into
-- its dead letter and back on replay, and becomes the parent of the job's run span when the
-- daemon exports traces. NULL (the default) costs nothing.

-- Why `tp` is not a version-00 traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, neither
-- id all zeros), or NULL when it is one.
CREATE FUNCTION chainsync.traceparent_error(tp text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN length(tp) <> 55 THEN
            format('must be 55 characters (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>), got %s', length(tp))
        WHEN tp !~ '^00-' THEN
            format('unsupported version %L: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>', split_part(tp, '-', 1))
        WHEN tp !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' THEN
            'not lowercase hex: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>'
        WHEN substr(tp, 4, 32) = repeat('0', 32) THEN 'the trace id must not be all zeros'
        WHEN substr(tp, 37, 16) = repeat('0', 16) THEN 'the parent id must not be all zeros'
    END
$$;

ALTER TABLE chainsync.jobs ADD COLUMN traceparent text
    CONSTRAINT jobs_traceparent_format CHECK (traceparent IS NULL OR chainsync.traceparent_error(traceparent) IS NULL);
ALTER TABLE chainsync.dead_letters ADD COLUMN traceparent text;

-- The dead letter keeps the job's traceparent (a replay continues the same trace).
CREATE OR REPLACE FUNCTION chainsync.bury(job chainsync.jobs, last_error jsonb, reason text) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    INSERT INTO chainsync.dead_letters (id, kind, queue, args, priority, attempt, max_attempts,
        backoff_base_ms, backoff_cap_ms, unique_key, errors, reason, created_at, traceparent)
    VALUES (job.id, job.kind, job.queue, job.args, job.priority, job.attempt, job.max_attempts,
            job.backoff_base_ms, job.backoff_cap_ms, job.unique_key,
            job.errors || jsonb_build_array(last_error), reason, job.created_at, job.traceparent)
    ON CONFLICT (id) DO UPDATE
    SET errors = EXCLUDED.errors, attempt = EXCLUDED.attempt, reason = EXCLUDED.reason,
        args = EXCLUDED.args, traceparent = EXCLUDED.traceparent, failed_at = now()
    RETURNING id
$$;

-- chainsync.enqueue(..., traceparent => '00-…'): the same function with one more defaulted
-- argument, so every existing call keeps working.
DROP FUNCTION chainsync.enqueue(text, jsonb, text, smallint, timestamptz, text, int, bigint, bigint, interval);
CREATE FUNCTION chainsync.enqueue(
    kind         text,
    args         jsonb DEFAULT '{}',
    queue        text DEFAULT NULL,
    priority     smallint DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    backoff_base_ms bigint DEFAULT NULL,
    backoff_cap_ms  bigint DEFAULT NULL,
    unique_for   interval DEFAULT NULL,
    traceparent  text DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k  chainsync.kinds%ROWTYPE;
    new_id uuid;
    args_err text;
    holder uuid;
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
    IF enqueue.unique_for IS NOT NULL AND enqueue.unique_key IS NULL THEN
        RAISE EXCEPTION 'chainsync.enqueue: unique_for needs a unique_key' USING ERRCODE = '22023';
    END IF;
    IF enqueue.unique_for IS NOT NULL AND NOT enqueue.unique_for > interval '0' THEN
        RAISE EXCEPTION 'chainsync.enqueue: unique_for must be positive, got %', enqueue.unique_for
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.traceparent IS NOT NULL THEN
        args_err := chainsync.traceparent_error(enqueue.traceparent);
        IF args_err IS NOT NULL THEN
            RAISE EXCEPTION 'chainsync.enqueue: traceparent %', args_err USING ERRCODE = '22023';
        END IF;
    END IF;
    IF k.args_schema IS NOT NULL THEN
        args_err := chainsync.args_error(k.args_schema, enqueue.args);
        IF args_err IS NOT NULL THEN
            RAISE EXCEPTION 'chainsync.enqueue: invalid args for %: %', enqueue.kind, args_err
                USING ERRCODE = '22023',
                      HINT = format('chainsync.kinds.args_schema of %L describes the accepted args', enqueue.kind);
        END IF;
    END IF;
    IF enqueue.unique_for IS NOT NULL THEN
        new_id := chainsync.uuid_v7();
        holder := chainsync.claim_unique_window(enqueue.unique_key, new_id, enqueue.unique_for);
        IF holder <> new_id THEN
            RETURN holder;
        END IF;
    END IF;
    -- The holder of the key can start (or finish) between a conflict and the look-up: try again.
    LOOP
        INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                                    backoff_base_ms, backoff_cap_ms, unique_while_running, traceparent)
        VALUES (coalesce(new_id, chainsync.uuid_v7()), enqueue.kind, coalesce(enqueue.queue, k.queue), enqueue.args,
                enqueue.priority, coalesce(enqueue.max_attempts, k.max_attempts),
                coalesce(enqueue.run_at, now()), enqueue.unique_key,
                enqueue.backoff_base_ms, enqueue.backoff_cap_ms, k.unique_while_running, enqueue.traceparent)
        ON CONFLICT DO NOTHING
        RETURNING id INTO holder;
        IF holder IS NOT NULL THEN
            RETURN holder;
        END IF;
        holder := chainsync.unique_holder(enqueue.unique_key);
        IF holder IS NOT NULL THEN
            IF enqueue.unique_for IS NOT NULL THEN
                -- A job of the key still waits to start: the window belongs to it.
                UPDATE chainsync.unique_windows w SET job_id = holder WHERE w.unique_key = enqueue.unique_key;
            END IF;
            RETURN holder;
        END IF;
    END LOOP;
END
$$;

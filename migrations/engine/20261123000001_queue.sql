-- chainsync queue engine: jobs, dead letters, cron claims, the kinds table and the SQL enqueue API.
CREATE SCHEMA IF NOT EXISTS chainsync;

-- 'available' covers scheduled jobs too (run_at in the future); dead letters live in their own
-- table, so the hot table only holds work that can still run.
CREATE TYPE chainsync.job_state AS ENUM ('available', 'running', 'completed', 'cancelled');

-- Known kinds and their defaults, upserted from the registry by `migrate` and at daemon start, so
-- that chainsync.enqueue() can reject unknown kinds from any language.
CREATE TABLE chainsync.kinds (
    kind            text PRIMARY KEY,
    queue           text NOT NULL DEFAULT 'default',
    max_attempts    int  NOT NULL CHECK (max_attempts > 0),
    backoff_base_ms bigint NOT NULL CHECK (backoff_base_ms > 0),
    backoff_cap_ms  bigint NOT NULL CHECK (backoff_cap_ms >= backoff_base_ms),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chainsync.jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    queue            text NOT NULL DEFAULT 'default',
    args             jsonb NOT NULL,
    priority         smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 100),
    state            chainsync.job_state NOT NULL DEFAULT 'available',
    -- incremented when a worker takes the job; with lease_owner it is the fencing token
    attempt          int NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     int NOT NULL DEFAULT 20 CHECK (max_attempts > 0),
    -- per-job backoff override; NULL = the kind's policy
    backoff_base_ms  bigint CHECK (backoff_base_ms > 0),
    backoff_cap_ms   bigint CHECK (backoff_cap_ms > 0),
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_owner      uuid,
    lease_expires_at timestamptz,
    unique_key       text,
    -- one object per failed attempt: {attempt, at, class, error}
    errors           jsonb NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The fetch query walks this index in order; it only holds runnable rows.
CREATE INDEX jobs_fetch_idx ON chainsync.jobs (queue, priority, run_at, id) WHERE state = 'available';
-- Rescuer and heartbeat scan running rows only (bounded by total concurrency).
CREATE INDEX jobs_running_idx ON chainsync.jobs (lease_expires_at) WHERE state = 'running';
-- Pruner and listings of finished jobs.
CREATE INDEX jobs_finished_idx ON chainsync.jobs (finished_at) WHERE state IN ('completed', 'cancelled');
-- At most one active job per unique key; ON CONFLICT DO NOTHING returns the existing one.
CREATE UNIQUE INDEX jobs_unique_active_idx ON chainsync.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running');

CREATE TABLE chainsync.dead_letters (
    id           uuid PRIMARY KEY,           -- the job's id, kept across replays
    kind         text NOT NULL,
    queue        text NOT NULL,
    args         jsonb NOT NULL,
    priority     smallint NOT NULL,
    attempt      int NOT NULL,
    max_attempts int NOT NULL,
    backoff_base_ms bigint,
    backoff_cap_ms  bigint,
    unique_key   text,
    errors       jsonb NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('exhausted', 'fatal')),
    created_at   timestamptz NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_kind_idx ON chainsync.dead_letters (kind, failed_at);
CREATE INDEX dead_letters_failed_idx ON chainsync.dead_letters (failed_at);

-- One row per (schedule, tick): inserted in the same transaction as the tick's job, so any number
-- of daemons enqueue each tick once.
CREATE TABLE chainsync.cron_claims (
    schedule   text NOT NULL,
    tick       timestamptz NOT NULL,
    job_id     uuid,
    claimed_by text,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);

-- Time-ordered ids (UUID v7) so the primary key index stays append-mostly.
CREATE FUNCTION chainsync.uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1), 'hex')::uuid
$$;

-- Wake idle workers. Statement level: a bulk insert sends one notification, and Postgres folds
-- identical notifications of one transaction into one.
CREATE FUNCTION chainsync.notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chainsync_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON chainsync.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION chainsync.notify_jobs();

-- Enqueue from any language, inside the caller's own transaction. Validates what SQL can: the
-- kind is known, args is a JSON object, priority and attempts in range. Arguments that do not
-- decode into the kind's Rust type are dead-lettered as fatal on their first run.
-- Returns the new job's id, or the id of the active job that already holds unique_key.
CREATE FUNCTION chainsync.enqueue(
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
    INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                                backoff_base_ms, backoff_cap_ms)
    VALUES (chainsync.uuid_v7(), enqueue.kind, coalesce(enqueue.queue, k.queue), enqueue.args,
            enqueue.priority, coalesce(enqueue.max_attempts, k.max_attempts),
            coalesce(enqueue.run_at, now()), enqueue.unique_key,
            enqueue.backoff_base_ms, enqueue.backoff_cap_ms)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT j.id INTO new_id FROM chainsync.jobs j
        WHERE j.unique_key = enqueue.unique_key AND j.state IN ('available', 'running');
    END IF;
    RETURN new_id;
END
$$;

-- Operator control of the queue, shared by every daemon through this database:
--   * pausing a queue (chainsync.pause_queue / resume_queue): no daemon fetches from it; running
--     jobs finish; enqueues (scheduled ticks included) are stored as usual;
--   * cluster-wide limits checked where jobs are fetched: running jobs per queue and per kind
--     (optionally per partition of the kind's args, e.g. per chain_id), and jobs started per
--     second (a token bucket per queue and per kind);
--   * unique keys with a window (debounce): chainsync.enqueue(..., unique_for => '10 minutes').
--
-- Limits live in the rows below. `config` holds what the daemons' configuration says (written
-- at daemon start, see chainsync.apply_config_limits); a limit set at runtime (set_queue_limit,
-- set_kind_limit, and the CLI and HTTP calls over them) is `manual` and wins over the config,
-- across restarts, until reset_queue_limit / reset_kind_limit returns to the config's value.

CREATE TABLE chainsync.queues (
    queue        text PRIMARY KEY CHECK (queue <> ''),
    paused       boolean NOT NULL DEFAULT false,
    paused_at    timestamptz,
    -- running jobs of this queue in the whole cluster (NULL: no limit)
    concurrency  int CHECK (concurrency >= 1),
    -- jobs started per second in the whole cluster (NULL: no limit), bucket of `burst`
    rate         double precision CHECK (rate > 0 AND rate <= 1000000),
    burst        double precision CHECK (burst >= 1),
    tokens       double precision NOT NULL DEFAULT 0,
    refilled_at  timestamptz NOT NULL DEFAULT now(),
    config       jsonb,
    manual       boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- the plain fetch statement leaves such a queue to chainsync.fetch_controlled()
    controlled   boolean GENERATED ALWAYS AS (paused OR concurrency IS NOT NULL OR rate IS NOT NULL) STORED
);

CREATE TABLE chainsync.kind_limits (
    kind         text PRIMARY KEY,
    -- running jobs of this kind in the whole cluster, whatever their queue
    concurrency  int CHECK (concurrency >= 1),
    -- running jobs of this kind per distinct value of these top-level args fields
    partition_by text[] CHECK (cardinality(partition_by) BETWEEN 1 AND 8),
    partition_concurrency int CHECK (partition_concurrency >= 1),
    rate         double precision CHECK (rate > 0 AND rate <= 1000000),
    burst        double precision CHECK (burst >= 1),
    tokens       double precision NOT NULL DEFAULT 0,
    refilled_at  timestamptz NOT NULL DEFAULT now(),
    config       jsonb,
    manual       boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    active       boolean GENERATED ALWAYS AS
                 (concurrency IS NOT NULL OR partition_concurrency IS NOT NULL OR rate IS NOT NULL) STORED,
    CHECK ((partition_by IS NULL) = (partition_concurrency IS NULL))
);

-- Available jobs by kind: how a limited kind's jobs are found in a queue without walking the
-- jobs of other kinds ahead of them (and how the other kinds are found past a limited kind's
-- backlog). Used by chainsync.fetch_controlled() only; the plain fetch keeps jobs_fetch_idx.
CREATE INDEX jobs_kind_fetch_idx ON chainsync.jobs (kind, queue, priority, run_at, id)
    WHERE state = 'available';

-- Unique keys with a window: the job that opened the window of a key, until when it holds.
CREATE TABLE chainsync.unique_windows (
    unique_key  text PRIMARY KEY,
    job_id      uuid NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX unique_windows_expires_idx ON chainsync.unique_windows (expires_at);

-- The partition of a job's args: the JSON array of the named fields' values.
CREATE FUNCTION chainsync.partition_key(args jsonb, fields text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_agg(args -> f ORDER BY o)::text FROM unnest(fields) WITH ORDINALITY AS t(f, o)
$$;

-- Queues an operator may name: those of known kinds, those with a row here, those with jobs.
CREATE FUNCTION chainsync.queue_error(fn text, q text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN q IS NULL OR q = '' THEN fn || ': queue must be a non-empty name'
        WHEN EXISTS (SELECT 1 FROM chainsync.queues c WHERE c.queue = q)
          OR EXISTS (SELECT 1 FROM chainsync.kinds k WHERE k.queue = q)
          OR EXISTS (SELECT 1 FROM chainsync.jobs j WHERE j.queue = q AND j.state = 'available')
          OR EXISTS (SELECT 1 FROM chainsync.jobs j WHERE j.queue = q AND j.state = 'running')
        THEN NULL
        ELSE format('%s: unknown queue "%s" (known: %s)', fn, q,
            (SELECT coalesce(string_agg(n, ', ' ORDER BY n), 'none')
             FROM (SELECT queue AS n FROM chainsync.kinds UNION SELECT queue FROM chainsync.queues) t))
    END
$$;

-- Pauses a queue: from the next fetch on, no daemon takes its jobs. Running jobs finish;
-- enqueued jobs (scheduled ticks included) wait. Returns false when it was paused already.
CREATE FUNCTION chainsync.pause_queue(queue text) RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    err text := chainsync.queue_error('chainsync.pause_queue', pause_queue.queue);
    was boolean;
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = '22023';
    END IF;
    SELECT c.paused INTO was FROM chainsync.queues c WHERE c.queue = pause_queue.queue FOR UPDATE;
    INSERT INTO chainsync.queues AS c (queue, paused, paused_at)
    VALUES (pause_queue.queue, true, now())
    ON CONFLICT (queue) DO UPDATE SET paused = true, paused_at = coalesce(c.paused_at, now()),
                                      updated_at = now();
    RETURN NOT coalesce(was, false);
END
$$;

-- Resumes a paused queue and wakes the daemons. Returns false when it was not paused.
CREATE FUNCTION chainsync.resume_queue(queue text) RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    err text := chainsync.queue_error('chainsync.resume_queue', resume_queue.queue);
    was boolean;
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = '22023';
    END IF;
    UPDATE chainsync.queues c SET paused = false, paused_at = NULL, updated_at = now()
    WHERE c.queue = resume_queue.queue AND c.paused
    RETURNING true INTO was;
    PERFORM pg_notify('chainsync_jobs', '');
    RETURN coalesce(was, false);
END
$$;

-- Checks one set of limits; raises an error naming the argument. `props` are the args fields
-- of the kind (NULL: not checked).
CREATE FUNCTION chainsync.check_limits(fn text, concurrency int, partition_by text[],
                                       partition_concurrency int, rate double precision,
                                       burst double precision, props jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    f text;
BEGIN
    IF concurrency IS NOT NULL AND concurrency < 1 THEN
        RAISE EXCEPTION '%: concurrency must be at least 1 (pause the queue to stop it), got %', fn, concurrency
            USING ERRCODE = '22023';
    END IF;
    IF partition_concurrency IS NOT NULL AND partition_concurrency < 1 THEN
        RAISE EXCEPTION '%: partition_concurrency must be at least 1, got %', fn, partition_concurrency
            USING ERRCODE = '22023';
    END IF;
    IF (partition_by IS NULL OR cardinality(partition_by) = 0) <> (partition_concurrency IS NULL) THEN
        RAISE EXCEPTION '%: partition_by and partition_concurrency go together', fn USING ERRCODE = '22023';
    END IF;
    IF cardinality(partition_by) > 8 THEN
        RAISE EXCEPTION '%: partition_by names at most 8 fields', fn USING ERRCODE = '22023';
    END IF;
    IF props IS NOT NULL THEN
        FOREACH f IN ARRAY coalesce(partition_by, '{}') LOOP
            IF NOT props ? f THEN
                RAISE EXCEPTION '%: partition_by: "%" is not an args field (fields: %)', fn, f,
                    (SELECT coalesce(string_agg(k, ', ' ORDER BY k), 'none') FROM jsonb_object_keys(props) k)
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END IF;
    IF rate IS NOT NULL AND NOT (rate > 0 AND rate <= 1000000) THEN
        RAISE EXCEPTION '%: rate must be above 0 and at most 1000000 jobs per second, got %', fn, rate
            USING ERRCODE = '22023';
    END IF;
    IF burst IS NOT NULL AND rate IS NULL THEN
        RAISE EXCEPTION '%: burst needs a rate', fn USING ERRCODE = '22023';
    END IF;
    IF burst IS NOT NULL AND NOT burst >= 1 THEN
        RAISE EXCEPTION '%: burst must be at least 1, got %', fn, burst USING ERRCODE = '22023';
    END IF;
END
$$;

-- The bucket size of a rate: `burst` when given, else a tenth of a second's jobs (at least 1).
CREATE FUNCTION chainsync.default_burst(rate double precision, burst double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN rate IS NULL THEN NULL ELSE coalesce(burst, greatest(1, ceil(rate / 10))) END
$$;

-- Sets a queue's limits (all of them: NULL = none) at runtime, for every daemon at its next
-- fetch; wins over the config until chainsync.reset_queue_limit(queue).
CREATE FUNCTION chainsync.set_queue_limit(queue text, concurrency int DEFAULT NULL,
                                          rate double precision DEFAULT NULL,
                                          burst double precision DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    err text := chainsync.queue_error('chainsync.set_queue_limit', set_queue_limit.queue);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = '22023';
    END IF;
    PERFORM chainsync.check_limits('chainsync.set_queue_limit', set_queue_limit.concurrency, NULL, NULL,
                                   set_queue_limit.rate, set_queue_limit.burst, NULL);
    INSERT INTO chainsync.queues AS c (queue, concurrency, rate, burst, tokens, manual)
    VALUES (set_queue_limit.queue, set_queue_limit.concurrency, set_queue_limit.rate,
            chainsync.default_burst(set_queue_limit.rate, set_queue_limit.burst),
            coalesce(chainsync.default_burst(set_queue_limit.rate, set_queue_limit.burst), 0), true)
    ON CONFLICT (queue) DO UPDATE
    SET concurrency = EXCLUDED.concurrency, rate = EXCLUDED.rate, burst = EXCLUDED.burst,
        tokens = least(c.tokens, coalesce(EXCLUDED.burst, 0)), manual = true, updated_at = now();
    PERFORM pg_notify('chainsync_jobs', '');
END
$$;

-- Sets a kind's limits (all of them: NULL = none) at runtime; wins over the config until
-- chainsync.reset_kind_limit(kind).
CREATE FUNCTION chainsync.set_kind_limit(kind text, concurrency int DEFAULT NULL,
                                         partition_by text[] DEFAULT NULL,
                                         partition_concurrency int DEFAULT NULL,
                                         rate double precision DEFAULT NULL,
                                         burst double precision DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k chainsync.kinds%ROWTYPE;
    fields text[] := nullif(set_kind_limit.partition_by, '{}');
BEGIN
    SELECT * INTO k FROM chainsync.kinds WHERE kinds.kind = set_kind_limit.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chainsync.set_kind_limit: unknown job kind "%" (known: %)', set_kind_limit.kind,
            (SELECT coalesce(string_agg(kinds.kind, ', ' ORDER BY kinds.kind), 'none') FROM chainsync.kinds)
            USING ERRCODE = '22023';
    END IF;
    PERFORM chainsync.check_limits('chainsync.set_kind_limit', set_kind_limit.concurrency, fields,
                                   set_kind_limit.partition_concurrency, set_kind_limit.rate,
                                   set_kind_limit.burst, k.args_schema -> 'properties');
    INSERT INTO chainsync.kind_limits AS l (kind, concurrency, partition_by, partition_concurrency,
                                            rate, burst, tokens, manual)
    VALUES (set_kind_limit.kind, set_kind_limit.concurrency, fields, set_kind_limit.partition_concurrency,
            set_kind_limit.rate, chainsync.default_burst(set_kind_limit.rate, set_kind_limit.burst),
            coalesce(chainsync.default_burst(set_kind_limit.rate, set_kind_limit.burst), 0), true)
    ON CONFLICT (kind) DO UPDATE
    SET concurrency = EXCLUDED.concurrency, partition_by = EXCLUDED.partition_by,
        partition_concurrency = EXCLUDED.partition_concurrency, rate = EXCLUDED.rate,
        burst = EXCLUDED.burst, tokens = least(l.tokens, coalesce(EXCLUDED.burst, 0)),
        manual = true, updated_at = now();
    PERFORM pg_notify('chainsync_jobs', '');
END
$$;

-- Writes one row's limits from a config object {concurrency, partition_by, partition_concurrency,
-- rate, burst} (NULL: none).
CREATE FUNCTION chainsync.limits_from(cfg jsonb, OUT concurrency int, OUT partition_by text[],
                                      OUT partition_concurrency int, OUT rate double precision,
                                      OUT burst double precision)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (cfg ->> 'concurrency')::int,
           nullif(ARRAY(SELECT jsonb_array_elements_text(coalesce(cfg -> 'partition_by', '[]'))), '{}'),
           (cfg ->> 'partition_concurrency')::int,
           (cfg ->> 'rate')::double precision,
           chainsync.default_burst((cfg ->> 'rate')::double precision, (cfg ->> 'burst')::double precision)
$$;

-- Back to the config's limits of a queue.
CREATE FUNCTION chainsync.reset_queue_limit(queue text) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    err text := chainsync.queue_error('chainsync.reset_queue_limit', reset_queue_limit.queue);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = '22023';
    END IF;
    UPDATE chainsync.queues c
    SET (concurrency, rate, burst) = (SELECT l.concurrency, l.rate, l.burst FROM chainsync.limits_from(c.config) l),
        manual = false, updated_at = now()
    WHERE c.queue = reset_queue_limit.queue;
    UPDATE chainsync.queues c SET tokens = coalesce(c.burst, 0)
    WHERE c.queue = reset_queue_limit.queue AND c.tokens > coalesce(c.burst, 0);
    PERFORM pg_notify('chainsync_jobs', '');
END
$$;

-- Back to the config's limits of a kind.
CREATE FUNCTION chainsync.reset_kind_limit(kind text) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM chainsync.kinds k WHERE k.kind = reset_kind_limit.kind) THEN
        RAISE EXCEPTION 'chainsync.reset_kind_limit: unknown job kind "%"', reset_kind_limit.kind
            USING ERRCODE = '22023';
    END IF;
    UPDATE chainsync.kind_limits c
    SET (concurrency, partition_by, partition_concurrency, rate, burst) =
            (SELECT l.concurrency, l.partition_by, l.partition_concurrency, l.rate, l.burst
             FROM chainsync.limits_from(c.config) l),
        manual = false, updated_at = now()
    WHERE c.kind = reset_kind_limit.kind;
    UPDATE chainsync.kind_limits c SET tokens = coalesce(c.burst, 0)
    WHERE c.kind = reset_kind_limit.kind AND c.tokens > coalesce(c.burst, 0);
    DELETE FROM chainsync.kind_limits c WHERE c.kind = reset_kind_limit.kind AND c.config IS NULL;
    PERFORM pg_notify('chainsync_jobs', '');
END
$$;

-- The configuration's limits, written by each daemon at start: `queues` and `kinds` map names to
-- {concurrency, partition_by, partition_concurrency, rate, burst}. What the configuration no
-- longer names loses its config limits; manual limits stay in force.
CREATE FUNCTION chainsync.apply_config_limits(queues jsonb, kinds jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text;
    cfg jsonb;
    k chainsync.kinds%ROWTYPE;
BEGIN
    FOR name, cfg IN SELECT key, value FROM jsonb_each(coalesce(queues, '{}')) LOOP
        PERFORM chainsync.check_limits(format('queues.%s', name), (cfg ->> 'concurrency')::int, NULL, NULL,
                                       (cfg ->> 'rate')::double precision, (cfg ->> 'burst')::double precision, NULL);
    END LOOP;
    FOR name, cfg IN SELECT key, value FROM jsonb_each(coalesce(kinds, '{}')) LOOP
        SELECT * INTO k FROM chainsync.kinds WHERE kinds.kind = name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'kinds.%: unknown job kind', name USING ERRCODE = '22023';
        END IF;
        PERFORM chainsync.check_limits(format('kinds.%s', name), (cfg ->> 'concurrency')::int,
            (SELECT limits_from.partition_by FROM chainsync.limits_from(cfg)),
            (cfg ->> 'partition_concurrency')::int, (cfg ->> 'rate')::double precision,
            (cfg ->> 'burst')::double precision, k.args_schema -> 'properties');
    END LOOP;

    UPDATE chainsync.queues c SET config = NULL WHERE NOT coalesce(queues, '{}') ? c.queue AND c.config IS NOT NULL;
    INSERT INTO chainsync.queues AS c (queue, config)
    SELECT key, value FROM jsonb_each(coalesce(queues, '{}'))
    ON CONFLICT (queue) DO UPDATE SET config = EXCLUDED.config;
    UPDATE chainsync.queues c
    SET (concurrency, rate, burst) = (SELECT l.concurrency, l.rate, l.burst FROM chainsync.limits_from(c.config) l),
        updated_at = now()
    WHERE NOT c.manual;
    UPDATE chainsync.queues c SET tokens = coalesce(c.burst, 0) WHERE c.tokens > coalesce(c.burst, 0);

    UPDATE chainsync.kind_limits c SET config = NULL WHERE NOT coalesce(kinds, '{}') ? c.kind AND c.config IS NOT NULL;
    INSERT INTO chainsync.kind_limits AS c (kind, config)
    SELECT key, value FROM jsonb_each(coalesce(kinds, '{}'))
    ON CONFLICT (kind) DO UPDATE SET config = EXCLUDED.config;
    UPDATE chainsync.kind_limits c
    SET (concurrency, partition_by, partition_concurrency, rate, burst) =
            (SELECT l.concurrency, l.partition_by, l.partition_concurrency, l.rate, l.burst
             FROM chainsync.limits_from(c.config) l),
        updated_at = now()
    WHERE NOT c.manual;
    UPDATE chainsync.kind_limits c SET tokens = coalesce(c.burst, 0) WHERE c.tokens > coalesce(c.burst, 0);
    DELETE FROM chainsync.kind_limits c WHERE NOT c.manual AND c.config IS NULL;
    PERFORM pg_notify('chainsync_jobs', '');
END
$$;

-- Fetch of a queue under control (paused, or limits on it or on any kind): what
-- engine/src/queue/sql/fetch.sql hands over to. Returns the jobs taken, then one row with
-- `control` set and no job:
--   'none'    no control applies any more: the plain fetch statement may be used again;
--   'paused'  the queue is paused: nothing taken;
--   'open'    limits apply and held nothing back;
--   'held'    limits held jobs back; `retry_ms` says when a token of a rate comes (NULL: when a
--             running job of a limited kind ends, or at the next poll).
-- Each limit row is locked while its jobs are counted and taken, so fetches in any number of
-- daemons never exceed it: the queue's row with a wait (every fetch of a queue with a queue
-- limit takes its turn), a kind's row with SKIP LOCKED (a fetch that finds it taken leaves
-- that kind to the fetch holding it and takes other kinds' jobs). The jobs of kinds without a
-- limit are taken as by the plain fetch, without any lock of a limit. Every statement below
-- runs with a fresh snapshot (a VOLATILE function in READ COMMITTED), so the count after a lock
-- sees what the previous holder of the lock committed.
CREATE FUNCTION chainsync.fetch_controlled(q text, n int, owner uuid, lease_ms bigint)
RETURNS TABLE (id uuid, kind text, queue text, args jsonb, attempt int, max_attempts int,
               backoff_base_ms bigint, backoff_cap_ms bigint, limited boolean, control text,
               retry_ms int)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    qr chainsync.queues%ROWTYPE;
    lr chainsync.kind_limits%ROWTYPE;
    queue_limited boolean := false;
    budget int := n;
    allowed int;
    running int;
    busiest int;
    tok double precision;
    qtok double precision;
    ts timestamptz;
    held boolean := false;
    hint int;
    locked text[] := '{}';
    limited_kinds text[];
    saturated text[];
    c_id uuid[] := '{}';
    c_pri smallint[] := '{}';
    c_run timestamptz[] := '{}';
    chosen uuid[];
    taken chainsync.jobs[];
    k text;
    got int;
    pick uuid[];
    qts timestamptz;
    limited_due boolean := false;
BEGIN
    SELECT * INTO qr FROM chainsync.queues c WHERE c.queue = q;
    IF coalesce(qr.paused, false) THEN
        RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
            NULL::bigint, NULL::bigint, NULL::boolean, 'paused'::text, NULL::int;
        RETURN;
    END IF;
    SELECT array_agg(l.kind ORDER BY l.kind) INTO limited_kinds FROM chainsync.kind_limits l WHERE l.active;
    limited_kinds := coalesce(limited_kinds, '{}');
    IF NOT coalesce(qr.controlled, false) AND cardinality(limited_kinds) = 0 THEN
        RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
            NULL::bigint, NULL::bigint, NULL::boolean, 'none'::text, NULL::int;
        RETURN;
    END IF;

    -- The queue's own limits: one fetch of this queue at a time.
    IF qr.concurrency IS NOT NULL OR qr.rate IS NOT NULL THEN
        SELECT * INTO qr FROM chainsync.queues c WHERE c.queue = q FOR UPDATE;
        IF qr.paused THEN
            RETURN QUERY SELECT NULL::uuid, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
                NULL::bigint, NULL::bigint, NULL::boolean, 'paused'::text, NULL::int;
            RETURN;
        END IF;
        queue_limited := qr.concurrency IS NOT NULL OR qr.rate IS NOT NULL;
    END IF;
    IF qr.concurrency IS NOT NULL THEN
        SELECT count(*) INTO running FROM chainsync.jobs j WHERE j.state = 'running' AND j.queue = q;
        IF running + budget > qr.concurrency THEN
            held := true;
            budget := greatest(qr.concurrency - running, 0);
        END IF;
    END IF;
    IF qr.rate IS NOT NULL THEN
        qts := clock_timestamp();
        qtok := least(qr.burst, qr.tokens + greatest(extract(epoch FROM qts - qr.refilled_at), 0) * qr.rate);
        IF floor(qtok) < budget THEN
            held := true;
            budget := greatest(floor(qtok)::int, 0);
            IF qtok < 1 THEN
                hint := ceil((1 - qtok) / qr.rate * 1000);
            END IF;
        END IF;
    END IF;

    -- Limited kinds with due jobs in this queue, each under its row's lock.
    IF budget > 0 THEN
        FOREACH k IN ARRAY limited_kinds LOOP
            CONTINUE WHEN NOT EXISTS (
                SELECT 1 FROM chainsync.jobs j
                WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now());
            limited_due := true;
            SELECT * INTO lr FROM chainsync.kind_limits l WHERE l.kind = k AND l.active
                FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                -- Another fetch holds it (or the limit just went): try again in a moment.
                held := true;
                hint := least(coalesce(hint, 20), 20);
                CONTINUE;
            END IF;
            locked := locked || k;
            allowed := budget;
            IF lr.concurrency IS NOT NULL THEN
                SELECT count(*) INTO running FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = k;
                IF running + allowed > lr.concurrency THEN
                    held := true;
                    allowed := greatest(lr.concurrency - running, 0);
                END IF;
            END IF;
            IF lr.rate IS NOT NULL AND allowed > 0 THEN
                ts := clock_timestamp();
                tok := least(lr.burst, lr.tokens + greatest(extract(epoch FROM ts - lr.refilled_at), 0) * lr.rate);
                IF floor(tok) < allowed THEN
                    held := true;
                    allowed := greatest(floor(tok)::int, 0);
                    IF tok < 1 THEN
                        hint := least(coalesce(hint, 2147483647), ceil((1 - tok) / lr.rate * 1000)::int);
                    END IF;
                END IF;
            END IF;
            CONTINUE WHEN allowed <= 0;
            saturated := NULL;
            IF lr.partition_concurrency IS NOT NULL THEN
                SELECT max(r.n), array_agg(r.p) FILTER (WHERE r.n >= lr.partition_concurrency)
                INTO busiest, saturated
                FROM (SELECT chainsync.partition_key(j.args, lr.partition_by) AS p, count(*) AS n
                      FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = k GROUP BY 1) r;
            END IF;
            IF lr.partition_concurrency IS NULL OR coalesce(busiest, 0) + allowed <= lr.partition_concurrency THEN
                -- No partition can go over: the first `allowed` in order.
                SELECT c_id || coalesce(array_agg(t.id), '{}'), c_pri || coalesce(array_agg(t.priority), '{}'),
                       c_run || coalesce(array_agg(t.run_at), '{}')
                INTO c_id, c_pri, c_run
                FROM (SELECT j.id, j.priority, j.run_at FROM chainsync.jobs j
                      WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
                      ORDER BY j.priority, j.run_at, j.id
                      LIMIT allowed
                      FOR UPDATE SKIP LOCKED) t;
            ELSE
                -- Skip the partitions at their limit (looking at most 10,000 jobs ahead), and
                -- take no more of each other partition than it has room for.
                pick := ARRAY(
                    SELECT w.id FROM (
                        SELECT s.id, s.priority, s.run_at,
                               row_number() OVER (PARTITION BY s.p ORDER BY s.priority, s.run_at, s.id) AS rn,
                               coalesce(r.n, 0) AS busy
                        FROM (
                            SELECT a.* FROM (
                                SELECT j.id, j.priority, j.run_at, chainsync.partition_key(j.args, lr.partition_by) AS p
                                FROM chainsync.jobs j
                                WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
                                ORDER BY j.priority, j.run_at, j.id
                                LIMIT 10000) a
                            WHERE a.p <> ALL(coalesce(saturated, '{}'))
                            LIMIT allowed * 4 + 16) s
                        LEFT JOIN (SELECT chainsync.partition_key(j.args, lr.partition_by) AS p, count(*) AS n
                                   FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = k GROUP BY 1) r
                            ON r.p = s.p) w
                    WHERE w.rn <= lr.partition_concurrency - w.busy
                    ORDER BY w.priority, w.run_at, w.id
                    LIMIT allowed);
                IF cardinality(pick) < allowed THEN
                    held := true;
                END IF;
                -- Nobody else takes this kind while its row is locked; lock what was chosen.
                SELECT c_id || coalesce(array_agg(t.id), '{}'), c_pri || coalesce(array_agg(t.priority), '{}'),
                       c_run || coalesce(array_agg(t.run_at), '{}')
                INTO c_id, c_pri, c_run
                FROM (SELECT j.id, j.priority, j.run_at FROM chainsync.jobs j
                      WHERE j.id = ANY(pick) AND j.state = 'available'
                      FOR UPDATE SKIP LOCKED) t;
            END IF;
        END LOOP;

        IF NOT limited_due THEN
            -- No limited kind waits in this queue: the plain scan in queue order (a limited
            -- kind's job enqueued meanwhile is left to the next fetch).
            chosen := ARRAY(
                SELECT j.id FROM chainsync.jobs j
                WHERE j.state = 'available' AND j.queue = q AND j.run_at <= now()
                  AND j.kind <> ALL(limited_kinds)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT budget
                FOR UPDATE SKIP LOCKED);
        ELSE
        -- Every other kind: its first `budget` due jobs (from the index by kind, so that a
        -- limited kind's backlog is never walked), merged in order with the limited kinds'.
        chosen := ARRAY(
            SELECT m.id FROM (
                SELECT t.id, t.pri AS priority, t.run AS run_at
                FROM unnest(c_id, c_pri, c_run) AS t(id, pri, run)
                UNION ALL
                SELECT o.id, o.priority, o.run_at
                FROM chainsync.kinds kk
                CROSS JOIN LATERAL (
                    SELECT j.id, j.priority, j.run_at FROM chainsync.jobs j
                    WHERE j.kind = kk.kind AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
                    ORDER BY j.priority, j.run_at, j.id
                    LIMIT budget
                    FOR UPDATE OF j SKIP LOCKED) o
                WHERE kk.kind <> ALL(limited_kinds)) m
            ORDER BY m.priority, m.run_at, m.id
            LIMIT budget);
        END IF;
    END IF;

    -- Take the chosen jobs, charge the buckets with what was started, and return both.
    RETURN QUERY
        WITH up AS (
            UPDATE chainsync.jobs j
            SET state = 'running',
                attempt = j.attempt + 1,
                lease_owner = owner,
                lease_expires_at = now() + make_interval(secs => lease_ms::double precision / 1000),
                started_at = now()
            WHERE j.id = ANY(coalesce(chosen, '{}')) AND j.state = 'available'
            RETURNING j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.backoff_base_ms,
                      j.backoff_cap_ms),
        per_kind AS (
            SELECT up.kind, count(*) AS n FROM up WHERE up.kind = ANY(locked) GROUP BY up.kind),
        kind_charge AS (
            UPDATE chainsync.kind_limits l
            SET tokens = least(l.burst, l.tokens + greatest(extract(epoch FROM clock_timestamp() - l.refilled_at), 0) * l.rate) - pk.n,
                refilled_at = clock_timestamp()
            FROM per_kind pk
            WHERE l.kind = pk.kind AND l.rate IS NOT NULL
            RETURNING 1),
        queue_charge AS (
            UPDATE chainsync.queues c SET tokens = qtok - (SELECT count(*) FROM up), refilled_at = qts
            WHERE c.queue = q AND qr.rate IS NOT NULL
            RETURNING 1)
        SELECT up.id, up.kind, up.queue, up.args, up.attempt, up.max_attempts, up.backoff_base_ms,
               up.backoff_cap_ms, (queue_limited OR up.kind = ANY(locked)), NULL::text, NULL::int
        FROM up
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               CASE WHEN held THEN 'held' ELSE 'open' END, CASE WHEN held THEN hint END;
END
$$;

-- Queue by queue, what an operator asks first: jobs by state, whether it is paused, how long
-- the oldest due job has waited, the limits in force (and where they come from).
CREATE VIEW chainsync.queue_overview AS
WITH names AS (
    SELECT queue FROM chainsync.queues
    UNION SELECT queue FROM chainsync.kinds
    UNION SELECT DISTINCT queue FROM chainsync.jobs WHERE state IN ('available', 'running')
),
counts AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS due,
           count(*) FILTER (WHERE state = 'available' AND run_at > now()) AS scheduled,
           count(*) FILTER (WHERE state = 'running') AS running,
           min(run_at) FILTER (WHERE state = 'available' AND run_at <= now()) AS oldest_due
    FROM chainsync.jobs WHERE state IN ('available', 'running') GROUP BY queue
)
SELECT n.queue,
       coalesce(c.paused, false) AS paused, c.paused_at,
       coalesce(x.due, 0) AS due, coalesce(x.scheduled, 0) AS scheduled, coalesce(x.running, 0) AS running,
       greatest(extract(epoch FROM now() - x.oldest_due), 0)::double precision AS oldest_due_age_secs,
       c.concurrency, c.rate, c.burst, coalesce(c.manual, false) AS manual
FROM names n
LEFT JOIN chainsync.queues c ON c.queue = n.queue
LEFT JOIN counts x ON x.queue = n.queue;

-- Unique keys with a window: chainsync.enqueue(..., unique_key => K, unique_for => W) inserts a
-- job only when no job of K was enqueued with a window in the last W; otherwise it returns the id
-- of the job that opened the window (which may have run already). Without unique_for, unique
-- keys behave as before (deduplicated against a job that has not started yet).
DROP FUNCTION chainsync.enqueue(text, jsonb, text, smallint, timestamptz, text, int, bigint, bigint);
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
    unique_for   interval DEFAULT NULL
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
                                    backoff_base_ms, backoff_cap_ms, unique_while_running)
        VALUES (coalesce(new_id, chainsync.uuid_v7()), enqueue.kind, coalesce(enqueue.queue, k.queue), enqueue.args,
                enqueue.priority, coalesce(enqueue.max_attempts, k.max_attempts),
                coalesce(enqueue.run_at, now()), enqueue.unique_key,
                enqueue.backoff_base_ms, enqueue.backoff_cap_ms, k.unique_while_running)
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

-- Opens the window of `key` for job `id` unless one is open: returns `id` when it opened it, else
-- the job that holds the window. Concurrent callers wait for each other on the key's row.
CREATE FUNCTION chainsync.claim_unique_window(key text, id uuid, window_length interval) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    got uuid;
BEGIN
    INSERT INTO chainsync.unique_windows AS w (unique_key, job_id, expires_at)
    VALUES (key, id, now() + window_length)
    ON CONFLICT (unique_key) DO UPDATE SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
        WHERE w.expires_at <= now()
    RETURNING w.job_id INTO got;
    IF got IS NULL THEN
        SELECT w.job_id INTO got FROM chainsync.unique_windows w WHERE w.unique_key = key;
    END IF;
    RETURN got;
END
$$;

-- Limits that hold nothing back no longer serialize the fetches.
--
-- A concurrency limit was checked under its row's lock: a kind's by FOR UPDATE SKIP LOCKED (a
-- second fetch meanwhile took none of the kind and waited 20 ms), a queue's by FOR UPDATE (every
-- fetch of the queue waited for the one before). With a limit far above what runs, fetches now
-- share it: each takes a shared advisory lock on the limit and one of `SLOTS` (4) slots, counts
-- what runs, and takes at most `SHARE_CAP` (1,000) jobs. While at most SLOTS such fetches run at
-- once, each taking at most SHARE_CAP, a fetch that counted `running` and takes `x` keeps the
-- limit when running + x + (SLOTS - 1) * SHARE_CAP <= limit: a job it did not count was taken by
-- a fetch that held a slot while it counted (the latest-counting fetch of those that started the
-- jobs now running saw all others committed). The exclusive path (as before, plus an exclusive
-- advisory lock on the limit, which waits for or skips the sharers) takes over:
--   * for limits below SLOTS * SHARE_CAP, fetches of more than SHARE_CAP, rate and partition
--     limits (a token bucket is charged under the row's lock; partitions count by args);
--   * near the limit: a sharer that finds running + SLOTS * SHARE_CAP above it takes what is
--     safe and marks the limit `near`; fetches then use the exclusive path, which clears the mark
--     once running + (SLOTS + 1) * SHARE_CAP is within the limit again.
ALTER TABLE chainsync.kind_limits ADD COLUMN near boolean NOT NULL DEFAULT false;
ALTER TABLE chainsync.queues ADD COLUMN near boolean NOT NULL DEFAULT false;

-- The advisory-lock key of a limit (`what` is 'kind' or 'queue'), and of one of its slots.
CREATE FUNCTION chainsync.limit_lock_key(what text, name text, slot int DEFAULT NULL) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('chainsync.limit:' || what || ':' || name || coalesce('#' || slot, ''), 0)
$$;

-- Shares the limit (`what`, `name`) for this transaction: a shared lock on it and one of its
-- `slots` slots.
-- False when an exclusive fetch holds the limit or all slots are taken.
CREATE FUNCTION chainsync.limit_share(what text, name text, slots int) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(chainsync.limit_lock_key(what, name)) THEN
        RETURN false;
    END IF;
    FOR s IN 0..slots - 1 LOOP
        IF pg_try_advisory_xact_lock(chainsync.limit_lock_key(what, name, s)) THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;

CREATE OR REPLACE FUNCTION chainsync.fetch_controlled(q text, n int, owner uuid, lease_ms bigint)
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
    free text[] := '{}';
    -- See the top of this file.
    slots constant int := 4;
    share_cap constant int := 1000;
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

    -- A queue concurrency limit far above what runs: shared by the fetches (see the top).
    IF qr.concurrency IS NOT NULL AND qr.rate IS NULL AND NOT qr.near AND n <= share_cap
       AND qr.concurrency >= slots * share_cap AND chainsync.limit_share('queue', q, slots) THEN
        queue_limited := true;
        SELECT count(*) INTO running FROM chainsync.jobs j WHERE j.state = 'running' AND j.queue = q;
        IF running + slots * share_cap > qr.concurrency THEN
            held := true;
            budget := least(budget, greatest(qr.concurrency - running - (slots - 1) * share_cap, 0));
            UPDATE chainsync.queues c SET near = true WHERE c.queue = q AND NOT c.near;
            IF budget = 0 THEN
                hint := 5;
            END IF;
        END IF;
    ELSE
        -- The queue's own limits otherwise: one fetch of this queue at a time.
        IF qr.concurrency IS NOT NULL OR qr.rate IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(chainsync.limit_lock_key('queue', q));
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
            IF qr.near AND running + (slots + 1) * share_cap <= qr.concurrency THEN
                UPDATE chainsync.queues c SET near = false WHERE c.queue = q;
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
    END IF;

    -- Limited kinds with due jobs in this queue, each under its row's lock.
    IF budget > 0 THEN
        FOREACH k IN ARRAY limited_kinds LOOP
            -- (The first in queue order rather than EXISTS, whose ORDER BY and LIMIT the planner
            -- drops: so that the index by kind answers, not a scan of the table.)
            PERFORM FROM chainsync.jobs j
            WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
            ORDER BY j.priority, j.run_at, j.id
            LIMIT 1;
            CONTINUE WHEN NOT FOUND;
            -- A concurrency limit far above what runs: shared by the fetches (see the top).
            SELECT * INTO lr FROM chainsync.kind_limits l WHERE l.kind = k AND l.active;
            IF FOUND AND lr.rate IS NULL AND lr.partition_concurrency IS NULL AND NOT lr.near
               AND n <= share_cap AND lr.concurrency >= slots * share_cap
               AND chainsync.limit_share('kind', k, slots) THEN
                locked := locked || k;
                SELECT count(*) INTO running FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = k;
                IF running + slots * share_cap <= lr.concurrency THEN
                    free := free || k;
                    CONTINUE;
                END IF;
                -- Close to the limit: what is safe beside the other sharers, and the mark.
                allowed := least(budget, greatest(lr.concurrency - running - (slots - 1) * share_cap, 0));
                UPDATE chainsync.kind_limits l SET near = true WHERE l.kind = k AND NOT l.near;
                held := true;
                IF allowed <= 0 THEN
                    hint := least(coalesce(hint, 5), 5);
                END IF;
            ELSE
                -- Otherwise the limit is this fetch's alone while it decides (sharers hold it off).
                IF NOT pg_try_advisory_xact_lock(chainsync.limit_lock_key('kind', k)) THEN
                    held := true;
                    hint := least(coalesce(hint, 20), 20);
                    CONTINUE;
                END IF;
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
                    IF lr.near AND running + (slots + 1) * share_cap <= lr.concurrency THEN
                        UPDATE chainsync.kind_limits l SET near = false WHERE l.kind = k;
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
            END IF;
            CONTINUE WHEN allowed <= 0;
            saturated := NULL;
            IF lr.partition_concurrency IS NOT NULL THEN
                SELECT max(r.n), array_agg(r.p) FILTER (WHERE r.n >= lr.partition_concurrency)
                INTO busiest, saturated
                FROM (SELECT chainsync.partition_key(j.args, lr.partition_by) AS p, count(*) AS n
                      FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = k GROUP BY 1) r;
            END IF;
            IF allowed >= budget AND (lr.partition_concurrency IS NULL
                                      OR coalesce(busiest, 0) + allowed <= lr.partition_concurrency) THEN
                -- The limit holds nothing back in this fetch: the kind's jobs are taken in queue
                -- order with the rest (under its row's lock, held to the end of the fetch).
                free := free || k;
            ELSIF lr.partition_concurrency IS NULL OR coalesce(busiest, 0) + allowed <= lr.partition_concurrency THEN
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

        -- The limited kinds whose jobs are not taken in queue order below: those without due jobs
        -- here (one enqueued meanwhile is left to the next fetch), those another fetch holds,
        -- and those whose limit held jobs back (already chosen above).
        limited_kinds := ARRAY(SELECT u FROM unnest(limited_kinds) u WHERE u <> ALL(free));
        IF cardinality(c_id) = 0 THEN
            -- No limit held anything back: the plain scan in queue order.
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

    -- Take the chosen jobs, charge the buckets with what was started, and return both. Every
    -- chosen job was locked above while available (FOR UPDATE re-checks the state of a row
    -- changed meanwhile), so the update finds them by primary key alone: a state condition
    -- would let the planner, with statistics that call the table small, scan the whole partial
    -- index of available jobs instead.
    RETURN QUERY
        WITH up AS (
            UPDATE chainsync.jobs j
            SET state = 'running',
                attempt = j.attempt + 1,
                lease_owner = owner,
                lease_expires_at = now() + make_interval(secs => lease_ms::double precision / 1000),
                started_at = now()
            WHERE j.id = ANY(coalesce(chosen, '{}'))
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

-- The limited fetch at the cost of the plain one when its limits hold nothing back.
--
-- 1. chainsync.fetch_controlled() took a limited kind's jobs with a scan of their own and every
--    other kind's through a scan per kind, even when the limits held nothing back. Now a kind
--    whose limit leaves room for the whole fetch is taken in queue order with the rest, in the
--    one scan the plain fetch does; the per-kind scans remain for fetches a limit narrows.
-- 2. The update of the chosen jobs finds them by primary key alone (see below).
-- 3. Plans. A statement of a plpgsql function runs with a generic plan after a few calls, where
--    `kind = $k` is estimated at 1/n_distinct of the table. With one kind filling the table
--    (a backlog of one kind: a bulk sync, a benchmark) that is every row, and the planner scans
--    the queue's index filtering by kind instead of the index by kind: for a kind with no due
--    jobs, a walk over the whole backlog (0.1 s per 100,000 jobs, per kind, per fetch). The
--    column's n_distinct is fixed at 10 (about the number of kinds an application runs), so a
--    kind's share is never taken for the whole table; and the "any due job of this kind" probe
--    reads the first job in queue order instead of EXISTS, whose ORDER BY and LIMIT the planner
--    drops before choosing a plan.
ALTER TABLE chainsync.jobs ALTER COLUMN kind SET (n_distinct = 10);
ANALYZE chainsync.jobs;

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
            -- (The first in queue order rather than EXISTS, whose ORDER BY and LIMIT the planner
            -- drops: so that the index by kind answers, not a scan of the table.)
            PERFORM FROM chainsync.jobs j
            WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
            ORDER BY j.priority, j.run_at, j.id
            LIMIT 1;
            CONTINUE WHEN NOT FOUND;
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

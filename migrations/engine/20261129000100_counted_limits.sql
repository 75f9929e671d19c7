-- Limits that hold nothing back cost (almost) nothing per fetch.
--
-- 1. Limits that hold nothing back no longer take a queue off the plain fetch: its statement
--    (engine/src/queue/sql/fetch.sql) asks chainsync.fetch_plan() below, which shares the
--    large concurrency limits and looks for due jobs of the kinds whose limits it cannot share,
--    and serves the queue itself unless a limit narrows the fetch. chainsync.fetch_controlled()
--    is left with the fetches a limit narrows, and says `none` after one that nothing narrowed.
-- 2. A shared limit (see 20261129000000_shared_limits.sql) is no longer counted at every fetch.
--    Every fetch that shares a concurrency limit draws a ticket from one sequence after taking
--    its slot. A count of the running jobs is stored on the limit with the ticket of the fetch
--    that made it: (counted_ticket T, counted_running R). A fetch with ticket F then knows
--    without counting that, besides the fetches holding a slot with it (its margin, as before),
--    at most
--        R + SHARE_CAP                     (the counting fetch's own jobs)
--          + (F - T - 1) * SHARE_CAP       (fetches with tickets between, at most SHARE_CAP each)
--          + (SLOTS - 1) * SHARE_CAP       (fetches that held a slot during the count)
--    jobs run. It counts again, and stores the count, only when that leaves too little room
--    below the limit (with a limit of 100,000 and 500 running, one fetch in about 90). A fetch
--    that takes the limit alone (the exclusive path, which draws no ticket and may take more
--    than SHARE_CAP) clears the stored count, as does a change of the limit: the next sharer
--    counts.
-- 3. A shareable limit is no longer preceded by a probe for due jobs of its kind: sharing costs
--    less than the probe, which walks the entries that taken jobs leave at the head of the index
--    by kind.
CREATE SEQUENCE chainsync.limit_tickets;
ALTER TABLE chainsync.kind_limits ADD COLUMN counted_ticket bigint, ADD COLUMN counted_running int;
ALTER TABLE chainsync.queues ADD COLUMN counted_ticket bigint, ADD COLUMN counted_running int;

-- A stored count holds only while every fetch of the limit draws a ticket: a change of the
-- limit (made, lifted, set again), after which other fetches may have started jobs of it without
-- one, forgets it.
CREATE FUNCTION chainsync.limit_forget_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.concurrency IS DISTINCT FROM OLD.concurrency OR NEW.rate IS DISTINCT FROM OLD.rate THEN
        NEW.counted_ticket := NULL;
        NEW.counted_running := NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER kind_limits_forget_count BEFORE UPDATE ON chainsync.kind_limits
    FOR EACH ROW EXECUTE FUNCTION chainsync.limit_forget_count();
CREATE TRIGGER queues_forget_count BEFORE UPDATE ON chainsync.queues
    FOR EACH ROW EXECUTE FUNCTION chainsync.limit_forget_count();

-- An upper bound on the running jobs of a concurrency limit (`what` 'kind' or 'queue'), for a
-- fetch holding one of its slots: the stored count plus what fetches since may have started,
-- or, when that leaves less than `slots` × `share_cap` below `lim`, a new count (stored on the
-- limit unless another fetch is storing one). See the top of this file.
CREATE FUNCTION chainsync.limit_running(what text, name text, lim int, slots int, share_cap int)
RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    f bigint := nextval('chainsync.limit_tickets');
    t bigint;
    r int;
BEGIN
    IF what = 'kind' THEN
        SELECT l.counted_ticket, l.counted_running INTO t, r FROM chainsync.kind_limits l WHERE l.kind = name;
    ELSE
        SELECT c.counted_ticket, c.counted_running INTO t, r FROM chainsync.queues c WHERE c.queue = name;
    END IF;
    IF t IS NOT NULL THEN
        -- Besides R: the counting fetch's own jobs, those of fetches with tickets between T and
        -- F, and those of fetches that held a slot while the count was made (they may have
        -- committed since; fetches holding a slot now are the caller's margin).
        r := r + (1 + greatest(f - t - 1, 0) + (slots - 1)) * share_cap;
        IF r + slots * share_cap <= lim THEN
            RETURN r;
        END IF;
    END IF;
    -- Stored only where no other fetch is storing (or marking the limit near): never waits.
    IF what = 'kind' THEN
        SELECT count(*) INTO r FROM chainsync.jobs j WHERE j.state = 'running' AND j.kind = name;
        PERFORM FROM chainsync.kind_limits l WHERE l.kind = name FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE chainsync.kind_limits l SET counted_ticket = f, counted_running = r
            WHERE l.kind = name AND coalesce(l.counted_ticket < f, true);
        END IF;
    ELSE
        SELECT count(*) INTO r FROM chainsync.jobs j WHERE j.state = 'running' AND j.queue = name;
        PERFORM FROM chainsync.queues c WHERE c.queue = name FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE chainsync.queues c SET counted_ticket = f, counted_running = r
            WHERE c.queue = name AND coalesce(c.counted_ticket < f, true);
        END IF;
    END IF;
    RETURN r;
END
$$;

-- The tokens in a bucket (`rate` per second up to `burst`) at time `t`, from its level `tokens`
-- at `refilled_at`. Inlined where it is called.
CREATE FUNCTION chainsync.bucket_level(tokens double precision, burst double precision,
                                       rate double precision, refilled_at timestamptz,
                                       t timestamptz) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT least(burst, tokens + greatest(extract(epoch FROM t - refilled_at), 0) * rate)
$$;

-- Whether kind `k` has a due job in queue `q`: the first in queue order rather than EXISTS,
-- whose ORDER BY and LIMIT the planner drops, so that the index by kind answers.
CREATE FUNCTION chainsync.kind_due(k text, q text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM FROM chainsync.jobs j
    WHERE j.kind = k AND j.queue = q AND j.state = 'available' AND j.run_at <= now()
    ORDER BY j.priority, j.run_at, j.id
    LIMIT 1;
    RETURN FOUND;
END
$$;

-- What the plain fetch (engine/src/queue/sql/fetch.sql) of up to `n` jobs of queue `q` may do
-- under the limits: `controlled` when only chainsync.fetch_controlled() can serve it (paused, a
-- rate, a small or nearly reached concurrency limit, partitions, a limited kind with due jobs
-- whose limit cannot be shared); otherwise the limits are shared for this transaction
-- (chainsync.limit_share, chainsync.limit_running) and hold nothing back: the fetch leaves out
-- the kinds in `skip` (limited, without due jobs here) and flags the jobs of the kinds in
-- `locked` (and all of them when `queue_limited`) as taken under a limit. A kind with a rate
-- (and no other limit) whose bucket holds a token for every job the fetch may take is `rated`:
-- its row stays locked to the end of the fetch, which charges the bucket with what it took.
CREATE TYPE chainsync.fetch_plan AS (controlled boolean, skip text[], locked text[], queue_limited boolean,
                                     rated text[]);

CREATE FUNCTION chainsync.fetch_plan(q text, n int) RETURNS chainsync.fetch_plan
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    p chainsync.fetch_plan := ROW(true, '{}'::text[], '{}'::text[], false, '{}'::text[]);
    qr chainsync.queues%ROWTYPE;
    lr chainsync.kind_limits%ROWTYPE;
    -- See the top of 20261129000000_shared_limits.sql.
    slots constant int := 4;
    share_cap constant int := 1000;
BEGIN
    SELECT * INTO qr FROM chainsync.queues c WHERE c.queue = q;
    IF FOUND AND qr.controlled THEN
        IF qr.paused OR qr.rate IS NOT NULL OR qr.near OR n > share_cap
           OR qr.concurrency < slots * share_cap OR NOT chainsync.limit_share('queue', q, slots)
           OR chainsync.limit_running('queue', q, qr.concurrency, slots, share_cap) + slots * share_cap > qr.concurrency THEN
            RETURN p;
        END IF;
        p.queue_limited := true;
    END IF;
    FOR lr IN SELECT * FROM chainsync.kind_limits l WHERE l.active ORDER BY l.kind LOOP
        IF lr.rate IS NULL AND lr.partition_concurrency IS NULL AND NOT lr.near AND n <= share_cap
           AND lr.concurrency >= slots * share_cap AND chainsync.limit_share('kind', lr.kind, slots) THEN
            IF chainsync.limit_running('kind', lr.kind, lr.concurrency, slots, share_cap) + slots * share_cap > lr.concurrency THEN
                RETURN p;
            END IF;
            p.locked := p.locked || lr.kind;
        ELSIF lr.rate IS NOT NULL AND lr.concurrency IS NULL AND lr.partition_concurrency IS NULL THEN
            -- The bucket, under the limit's lock and its row's, as the controlled fetch takes it.
            IF NOT pg_try_advisory_xact_lock(chainsync.limit_lock_key('kind', lr.kind)) THEN
                RETURN p;
            END IF;
            SELECT * INTO lr FROM chainsync.kind_limits l WHERE l.kind = lr.kind FOR UPDATE SKIP LOCKED;
            IF NOT FOUND OR lr.rate IS NULL
               OR chainsync.bucket_level(lr.tokens, lr.burst, lr.rate, lr.refilled_at, clock_timestamp()) < n THEN
                RETURN p;
            END IF;
            p.locked := p.locked || lr.kind;
            p.rated := p.rated || lr.kind;
        ELSE
            -- Any due job of the kind here? (Also for a shareable limit whose slots fetches of
            -- other queues hold.)
            IF chainsync.kind_due(lr.kind, q) THEN
                RETURN p;
            END IF;
            p.skip := p.skip || lr.kind;
        END IF;
    END LOOP;
    p.controlled := false;
    RETURN p;
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
    plain boolean := false;
    exclusive boolean := false;
    k text;
    pick uuid[];
    qts timestamptz;
    free text[] := '{}';
    -- See the top of 20261129000000_shared_limits.sql.
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

    -- A queue concurrency limit far above what runs: shared by the fetches.
    IF qr.concurrency IS NOT NULL AND qr.rate IS NULL AND NOT qr.near AND n <= share_cap
       AND qr.concurrency >= slots * share_cap AND chainsync.limit_share('queue', q, slots) THEN
        queue_limited := true;
        running := chainsync.limit_running('queue', q, qr.concurrency, slots, share_cap);
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
            exclusive := true;
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
        IF queue_limited THEN
            -- This fetch may take more than a sharer, without a ticket: the next sharer counts.
            UPDATE chainsync.queues c SET counted_ticket = NULL WHERE c.queue = q AND c.counted_ticket IS NOT NULL;
        END IF;
        IF qr.rate IS NOT NULL THEN
            qts := clock_timestamp();
            qtok := chainsync.bucket_level(qr.tokens, qr.burst, qr.rate, qr.refilled_at, qts);
            IF floor(qtok) < budget THEN
                held := true;
                budget := greatest(floor(qtok)::int, 0);
                IF qtok < 1 THEN
                    hint := ceil((1 - qtok) / qr.rate * 1000);
                END IF;
            END IF;
        END IF;
    END IF;

    -- The limited kinds, each shared or under its row's lock.
    IF budget > 0 THEN
        FOREACH k IN ARRAY limited_kinds LOOP
            SELECT * INTO lr FROM chainsync.kind_limits l WHERE l.kind = k AND l.active;
            CONTINUE WHEN NOT FOUND;
            -- A concurrency limit far above what runs: shared by the fetches, whether or not
            -- the kind has due jobs here (sharing costs less than looking).
            IF lr.rate IS NULL AND lr.partition_concurrency IS NULL AND NOT lr.near
               AND n <= share_cap AND lr.concurrency >= slots * share_cap
               AND chainsync.limit_share('kind', k, slots) THEN
                locked := locked || k;
                running := chainsync.limit_running('kind', k, lr.concurrency, slots, share_cap);
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
                -- Any due job of the kind here?
                CONTINUE WHEN NOT chainsync.kind_due(k, q);
                -- The limit is this fetch's alone while it decides (sharers hold it off). (A rate
                -- alone that holds nothing back is one the plain fetch serves.)
                exclusive := exclusive OR lr.concurrency IS NOT NULL OR lr.partition_concurrency IS NOT NULL;
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
                -- This fetch may take more than a sharer, without a ticket: the next sharer counts.
                UPDATE chainsync.kind_limits l SET counted_ticket = NULL
                WHERE l.kind = k AND l.counted_ticket IS NOT NULL;
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
                    tok := chainsync.bucket_level(lr.tokens, lr.burst, lr.rate, lr.refilled_at, ts);
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
            -- No limit held anything back: the plain scan in queue order, in the statement that
            -- takes the jobs (below).
            plain := true;
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
    -- index of available jobs instead. Without a narrowing limit the ids come from the plain
    -- scan, gathered first as in the plain fetch.
    RETURN QUERY
        WITH up AS (
            UPDATE chainsync.jobs j
            SET state = 'running',
                attempt = j.attempt + 1,
                lease_owner = owner,
                lease_expires_at = now() + make_interval(secs => lease_ms::double precision / 1000),
                started_at = now()
            WHERE j.id = ANY(CASE WHEN plain THEN ARRAY(
                    SELECT p.id FROM chainsync.jobs p
                    WHERE p.state = 'available' AND p.queue = q AND p.run_at <= now()
                      AND p.kind <> ALL(limited_kinds)
                    ORDER BY p.priority, p.run_at, p.id
                    LIMIT budget
                    FOR UPDATE SKIP LOCKED)
                ELSE coalesce(chosen, '{}') END)
            RETURNING j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.backoff_base_ms,
                      j.backoff_cap_ms),
        per_kind AS (
            SELECT up.kind, count(*) AS n FROM up WHERE up.kind = ANY(locked) GROUP BY up.kind),
        kind_charge AS (
            UPDATE chainsync.kind_limits l
            SET tokens = chainsync.bucket_level(l.tokens, l.burst, l.rate, l.refilled_at, clock_timestamp()) - pk.n,
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
        FROM up;

    -- What controls the queue now: after a fetch that no limit narrowed (every limit shared, or
    -- without due jobs here), the plain fetch serves it again.
    RETURN QUERY
        SELECT NULL::uuid, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int, NULL::bigint,
               NULL::bigint, NULL::boolean,
               CASE WHEN held THEN 'held' WHEN exclusive THEN 'open' ELSE 'none' END,
               CASE WHEN held THEN hint END;
END
$$;

-- History tables partitioned by time (native partitioning); retention drops whole partitions.
--
-- balance_changes and events: LIST (chain_id), one table per chain and a DEFAULT partition for
-- chains that have none yet; each chain's table RANGE (block_number) over periods of its blocks
-- (a calendar month of block time each, estimated ahead from the chain's rate), `_low` below the
-- first period and `_high` above the last. Keys stay as they were (a block number is part of
-- them), and a lookup of "the last row before block B" reads the chain's partitions newest
-- first, stopping at the first that has one (an ordered scan: no DEFAULT among the ranges).
--
-- points_history: RANGE (window_start), a partition per month, `_low` and `_high` around them.
--
-- chainsync.history_prepare (run by the daemon's maintenance pass) gives chains found in the
-- DEFAULT partitions their own tables and creates the next period ahead of the chain's head;
-- chainsync.history_retain drops the periods entirely older than a cutoff. Dropped balance
-- history leaves each holder's last row in `_low`, so that "the amount before block B" stays
-- exact for every B after the dropped periods.

-- One row per period partition of a chain's balance_changes / events table.
CREATE TABLE chainsync.history_periods (
    parent     text NOT NULL CHECK (parent IN ('balance_changes', 'events')),
    chain_id   bigint NOT NULL,
    from_block bigint NOT NULL,
    to_block   bigint NOT NULL CHECK (to_block > from_block),
    -- chain time of the first block of the period, when known
    from_time  timestamptz,
    -- set once the chain is past the period: no block of it is later than this
    closed_at  timestamptz,
    PRIMARY KEY (parent, chain_id, from_block)
);

-- One row per month partition of points_history.
CREATE TABLE chainsync.points_history_months (
    month timestamptz PRIMARY KEY
);

-- Period bounds of a chain from the block times of balance history in `src`: a period starts
-- at the first block of each month that has timed rows. The last period's length is the chain's
-- blocks per 30 days (from the rows' own rate; `fallback` when that is unknown). `closed_at` of
-- a period is the time of the next period's first block.
CREATE FUNCTION chainsync.history_layout(src text, chain bigint, fallback bigint)
RETURNS TABLE (from_block bigint, to_block bigint, from_time timestamptz, closed_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    b bigint[];
    t timestamptz[];
    span bigint := fallback;
    n int;
BEGIN
    EXECUTE format(
        'SELECT array_agg(fb ORDER BY fb), array_agg(ft ORDER BY fb) FROM (
             SELECT fb, ft, max(fb) OVER (ORDER BY m ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev
             FROM (SELECT date_trunc(''month'', block_time) AS m, min(block_number) AS fb, min(block_time) AS ft
                   FROM chainsync.%I WHERE chain_id = $1 AND block_time IS NOT NULL GROUP BY 1) m
         ) x WHERE prev IS NULL OR fb > prev', src)
    INTO b, t USING chain;
    n := coalesce(array_length(b, 1), 0);
    IF n = 0 THEN
        RETURN;
    END IF;
    IF n >= 2 AND t[n] > t[1] THEN
        span := greatest(1, ((b[n] - b[1]) * (30 * 86400) / extract(epoch FROM t[n] - t[1]))::bigint);
    END IF;
    FOR i IN 1..n LOOP
        from_block := b[i];
        from_time := t[i];
        IF i < n THEN
            to_block := b[i + 1];
            closed_at := t[i + 1];
        ELSE
            to_block := b[i] + span;
            closed_at := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Creates chainsync.<parent>_c<chain> with `_low`, the periods of history_periods and `_high`,
-- fills it with the chain's rows from `src` (deleted there) and attaches it to the parent.
CREATE FUNCTION chainsync.history_chain_create(parent text, chain bigint, src text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text := format('%s_c%s', parent, chain);
    p record;
    first_block bigint;
    last_block bigint;
BEGIN
    SELECT min(h.from_block), max(h.to_block) INTO first_block, last_block
    FROM chainsync.history_periods h WHERE h.parent = history_chain_create.parent AND h.chain_id = chain;
    IF first_block IS NULL THEN
        RAISE EXCEPTION 'no periods for %.%', parent, chain;
    END IF;
    EXECUTE format('CREATE TABLE chainsync.%I (LIKE chainsync.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
                    PARTITION BY RANGE (block_number)', t, parent);
    EXECUTE format('CREATE TABLE chainsync.%I PARTITION OF chainsync.%I FOR VALUES FROM (MINVALUE) TO (%s)',
                   t || '_low', t, first_block);
    FOR p IN SELECT h.from_block, h.to_block FROM chainsync.history_periods h
             WHERE h.parent = history_chain_create.parent AND h.chain_id = chain ORDER BY h.from_block LOOP
        EXECUTE format('CREATE TABLE chainsync.%I PARTITION OF chainsync.%I FOR VALUES FROM (%s) TO (%s)',
                       format('%s_b%s', t, p.from_block), t, p.from_block, p.to_block);
    END LOOP;
    EXECUTE format('CREATE TABLE chainsync.%I PARTITION OF chainsync.%I FOR VALUES FROM (%s) TO (MAXVALUE)',
                   t || '_high', t, last_block);
    IF src IS NOT NULL THEN
        -- Rows move from `src` (the DEFAULT partition) to a partition attached beside it. Attaching
        -- takes a weaker lock on the parent than readers need, and a query planned before the
        -- attach would run after it and see the moved rows in neither place: so no query of the
        -- table runs (and no write lands in `src`) until this transaction ends.
        EXECUTE format('LOCK TABLE chainsync.%I IN ACCESS EXCLUSIVE MODE', parent);
        EXECUTE format('WITH m AS (DELETE FROM chainsync.%I WHERE chain_id = $1 RETURNING *)
                        INSERT INTO chainsync.%I SELECT * FROM m', src, t) USING chain;
    END IF;
    EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES IN (%s)', parent, t, chain);
END
$$;

-- Cuts the period [from_block, to_block) off the bottom of `high` (the range partition from
-- from_block to MAXVALUE of `t`), moving its rows.
CREATE FUNCTION chainsync.history_split_high(t text, from_block bigint, to_block bigint, part text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    high text := t || '_high';
BEGIN
    EXECUTE format('CREATE TABLE chainsync.%I (LIKE chainsync.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, t);
    EXECUTE format('ALTER TABLE chainsync.%I DETACH PARTITION chainsync.%I', t, high);
    EXECUTE format('WITH m AS (DELETE FROM chainsync.%I WHERE %s RETURNING *) INSERT INTO chainsync.%I SELECT * FROM m',
                   high, CASE WHEN t = 'points_history' THEN format('window_start < %L', to_timestamp(to_block))
                              ELSE format('block_number < %s', to_block) END, part);
    IF t = 'points_history' THEN
        EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES FROM (%L) TO (%L)',
                       t, part, to_timestamp(from_block), to_timestamp(to_block));
        EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES FROM (%L) TO (MAXVALUE)',
                       t, high, to_timestamp(to_block));
    ELSE
        EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES FROM (%s) TO (%s)',
                       t, part, from_block, to_block);
        EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES FROM (%s) TO (MAXVALUE)',
                       t, high, to_block);
    END IF;
END
$$;

-- Creates what is missing ahead of time: tables of chains found in the DEFAULT partitions or
-- with a checkpoint, the next period of every chain whose head (checkpoint, sync runs, rows
-- already beyond the last period) reached its last period, and the months of points_history up to
-- `now` + 1 month. Periods the head passed are closed (closed_at = now). `fallback` is the
-- length in blocks of a chain's period when no block times tell its rate. Returns partitions created.
CREATE FUNCTION chainsync.history_prepare(p_now timestamptz, fallback bigint)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    created int := 0;
    chain bigint;
    par text;
    t text;
    head bigint;
    v bigint;
    last record;
    span bigint;
    m timestamptz;
    last_month timestamptz;
BEGIN
    FOR chain IN
        SELECT c FROM (
            SELECT chain_id AS c FROM chainsync.ingest_checkpoints
            UNION SELECT chain_id FROM chainsync.sync_runs WHERE state = 'running'
            UNION SELECT DISTINCT chain_id FROM chainsync.balance_changes_default
            UNION SELECT DISTINCT chain_id FROM chainsync.events_default
            UNION SELECT DISTINCT chain_id FROM chainsync.history_periods) x ORDER BY c
    LOOP
        head := greatest(
            (SELECT block_number FROM chainsync.ingest_checkpoints WHERE chain_id = chain),
            (SELECT max(block_number) FROM chainsync.sync_runs WHERE chain_id = chain AND state = 'running'));
        FOREACH par IN ARRAY ARRAY['balance_changes', 'events'] LOOP
            t := format('%s_c%s', par, chain);
            IF to_regclass(format('chainsync.%I', t)) IS NULL THEN
                IF NOT EXISTS (SELECT 1 FROM chainsync.history_periods h WHERE h.parent = 'balance_changes' AND h.chain_id = chain) THEN
                    INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block, from_time, closed_at)
                    SELECT 'balance_changes', chain, l.from_block, l.to_block, l.from_time, l.closed_at
                    FROM chainsync.history_layout('balance_changes_default', chain, fallback) l;
                END IF;
                IF NOT EXISTS (SELECT 1 FROM chainsync.history_periods h WHERE h.parent = 'balance_changes' AND h.chain_id = chain) THEN
                    -- No block times: one period from the lowest block known.
                    v := least(head,
                               (SELECT min(block_number) FROM chainsync.balance_changes_default WHERE chain_id = chain),
                               (SELECT min(block_number) FROM chainsync.events_default WHERE chain_id = chain));
                    CONTINUE WHEN v IS NULL;
                    INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block)
                    VALUES ('balance_changes', chain, v, v + fallback);
                END IF;
                IF par = 'events' THEN
                    INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block, from_time, closed_at)
                    SELECT 'events', chain, h.from_block, h.to_block, h.from_time, h.closed_at
                    FROM chainsync.history_periods h WHERE h.parent = 'balance_changes' AND h.chain_id = chain
                    ON CONFLICT DO NOTHING;
                END IF;
                PERFORM chainsync.history_chain_create(par, chain, par || '_default');
                created := created + 1;
            END IF;
            EXECUTE format('SELECT max(block_number) FROM chainsync.%I', t || '_high') INTO v;
            head := greatest(head, v);
        END LOOP;
        CONTINUE WHEN head IS NULL;
        FOREACH par IN ARRAY ARRAY['balance_changes', 'events'] LOOP
            t := format('%s_c%s', par, chain);
            CONTINUE WHEN to_regclass(format('chainsync.%I', t)) IS NULL;
            UPDATE chainsync.history_periods h SET closed_at = p_now
             WHERE h.parent = par AND h.chain_id = chain AND h.to_block <= head AND h.closed_at IS NULL;
            LOOP
                SELECT h.from_block, h.to_block INTO last FROM chainsync.history_periods h
                 WHERE h.parent = par AND h.chain_id = chain ORDER BY h.from_block DESC LIMIT 1;
                EXIT WHEN last.from_block > head;
                span := last.to_block - last.from_block;
                -- A head far beyond the last period: one period up to it, then the usual length.
                v := CASE WHEN head >= last.to_block + span THEN head + 1 ELSE last.to_block + span END;
                PERFORM chainsync.history_split_high(t, last.to_block, v, format('%s_b%s', t, last.to_block));
                INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block, closed_at)
                VALUES (par, chain, last.to_block, v, CASE WHEN v <= head THEN p_now END);
                created := created + 1;
            END LOOP;
        END LOOP;
    END LOOP;
    -- points_history: months up to the one after `now`.
    SELECT max(month) INTO last_month FROM chainsync.points_history_months;
    m := date_trunc('month', p_now) + interval '1 month';
    WHILE last_month < m LOOP
        PERFORM chainsync.history_split_high('points_history',
            extract(epoch FROM last_month + interval '1 month')::bigint,
            extract(epoch FROM last_month + interval '2 month')::bigint,
            'points_history_p' || to_char(last_month + interval '1 month', 'YYYYMM'));
        last_month := last_month + interval '1 month';
        INSERT INTO chainsync.points_history_months VALUES (last_month);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drops the partitions of `parent` ('balance_changes', 'events' or 'points_history') whose every
-- row is older than `cutoff`: for a chain's periods, closed_at <= cutoff; for points, months
-- ending by it (rows of windows before the first month, in `_low`, are deleted). What a chain's
-- dropped periods held goes to its `_low`, emptied for events and, for balance_changes, keeping
-- only each holder's last row. Returns partitions dropped.
CREATE FUNCTION chainsync.history_retain(parent text, cutoff timestamptz)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    dropped int := 0;
    chain bigint;
    t text;
    parts text[];
    upto bigint;
    p text;
    lo text;
    m timestamptz;
    upto_month timestamptz;
BEGIN
    IF parent = 'points_history' THEN
        SELECT array_agg('points_history_p' || to_char(month, 'YYYYMM') ORDER BY month), max(month) + interval '1 month'
          INTO parts, upto_month
          FROM chainsync.points_history_months
         WHERE month + interval '1 month' <= cutoff
           AND month < (SELECT max(month) FROM chainsync.points_history_months);
        IF parts IS NULL THEN
            DELETE FROM chainsync.points_history_low WHERE window_start < cutoff;
            RETURN 0;
        END IF;
        ALTER TABLE chainsync.points_history DETACH PARTITION chainsync.points_history_low;
        FOREACH p IN ARRAY parts LOOP
            EXECUTE format('ALTER TABLE chainsync.points_history DETACH PARTITION chainsync.%I', p);
            EXECUTE format('DROP TABLE chainsync.%I', p);
            dropped := dropped + 1;
        END LOOP;
        DELETE FROM chainsync.points_history_low WHERE window_start < cutoff;
        EXECUTE format('ALTER TABLE chainsync.points_history ATTACH PARTITION chainsync.points_history_low
                        FOR VALUES FROM (MINVALUE) TO (%L)', upto_month);
        DELETE FROM chainsync.points_history_months WHERE month < upto_month;
        RETURN dropped;
    END IF;
    IF parent NOT IN ('balance_changes', 'events') THEN
        RAISE EXCEPTION 'no history table %', parent;
    END IF;
    FOR chain IN SELECT DISTINCT h.chain_id FROM chainsync.history_periods h
                  WHERE h.parent = history_retain.parent ORDER BY 1 LOOP
        -- The lowest periods, all closed by the cutoff (never the last period of the chain).
        SELECT array_agg(format('%s_c%s_b%s', history_retain.parent, chain, h.from_block) ORDER BY h.from_block), max(h.to_block)
          INTO parts, upto
          FROM chainsync.history_periods h
         WHERE h.parent = history_retain.parent AND h.chain_id = chain
           AND h.from_block < coalesce((SELECT min(o.from_block) FROM chainsync.history_periods o
                                         WHERE o.parent = history_retain.parent AND o.chain_id = chain
                                           AND (o.closed_at IS NULL OR o.closed_at > cutoff)), 'infinity'::numeric)
           AND h.from_block < (SELECT max(o.from_block) FROM chainsync.history_periods o
                                WHERE o.parent = history_retain.parent AND o.chain_id = chain);
        CONTINUE WHEN parts IS NULL;
        t := format('%s_c%s', parent, chain);
        lo := t || '_low';
        IF parent = 'balance_changes' THEN
            -- Each holder's last row of what goes, into a new `_low`.
            EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE',
                           (SELECT string_agg(format('chainsync.%I', x), ', ') FROM unnest(parts || lo) x));
            EXECUTE format('CREATE TABLE chainsync.%I (LIKE chainsync.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           lo || '_n', t);
            EXECUTE format('INSERT INTO chainsync.%I SELECT DISTINCT ON (token, address) * FROM (%s) x
                            ORDER BY token, address, block_number DESC', lo || '_n',
                           (SELECT string_agg(format('SELECT * FROM chainsync.%I', x), ' UNION ALL ')
                              FROM unnest(lo || parts) x));
        ELSE
            EXECUTE format('CREATE TABLE chainsync.%I (LIKE chainsync.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           lo || '_n', t);
        END IF;
        EXECUTE format('ALTER TABLE chainsync.%I DETACH PARTITION chainsync.%I', t, lo);
        EXECUTE format('DROP TABLE chainsync.%I', lo);
        FOREACH p IN ARRAY parts LOOP
            EXECUTE format('ALTER TABLE chainsync.%I DETACH PARTITION chainsync.%I', t, p);
            EXECUTE format('DROP TABLE chainsync.%I', p);
            dropped := dropped + 1;
        END LOOP;
        EXECUTE format('ALTER TABLE chainsync.%I RENAME TO %I', lo || '_n', lo);
        EXECUTE format('ALTER TABLE chainsync.%I ATTACH PARTITION chainsync.%I FOR VALUES FROM (MINVALUE) TO (%s)',
                       t, lo, upto);
        DELETE FROM chainsync.history_periods h
         WHERE h.parent = history_retain.parent AND h.chain_id = chain AND h.to_block <= upto;
    END LOOP;
    RETURN dropped;
END
$$;

-- Leaf partitions of the history tables that were never analyzed: a large write into one makes
-- the planner guess its size (see store.rs), so they are analyzed at once. Returns how many.
CREATE FUNCTION chainsync.history_analyze_new(parent text)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT t.relid FROM pg_partition_tree(format('chainsync.%I', parent)::regclass) t
             JOIN pg_class c ON c.oid = t.relid
             WHERE t.isleaf AND c.reltuples < 0 LOOP
        EXECUTE format('ANALYZE %s', r.relid::regclass);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The tables, rows moved from the old ones.

ALTER TABLE chainsync.balance_changes RENAME TO balance_changes_unpartitioned;
ALTER TABLE chainsync.events RENAME TO events_unpartitioned;
ALTER TABLE chainsync.points_history RENAME TO points_history_unpartitioned;
ALTER INDEX chainsync.balance_changes_block_key RENAME TO balance_changes_unpartitioned_block_key;
ALTER INDEX chainsync.balance_changes_time_idx RENAME TO balance_changes_unpartitioned_time_idx;
ALTER INDEX chainsync.events_block_idx RENAME TO events_unpartitioned_block_idx;
ALTER INDEX chainsync.points_history_latest_idx RENAME TO points_history_unpartitioned_latest_idx;
ALTER TABLE chainsync.events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER TABLE chainsync.points_history_unpartitioned RENAME CONSTRAINT points_history_pkey TO points_history_unpartitioned_pkey;
ALTER TABLE chainsync.balance_changes_unpartitioned RENAME CONSTRAINT balance_changes_pkey TO balance_changes_unpartitioned_pkey;

-- `id` stays a unique row number (no longer a key: nothing looks rows up by it).
CREATE TABLE chainsync.balance_changes (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    old_amount   numeric(78,0),
    new_amount   numeric(78,0) NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    block_time   timestamptz,
    observed_at  timestamptz NOT NULL DEFAULT now(),
    source       text NOT NULL DEFAULT 'read' CHECK (source IN ('log', 'read', 'reconcile'))
) PARTITION BY LIST (chain_id);
CREATE TABLE chainsync.balance_changes_default PARTITION OF chainsync.balance_changes DEFAULT;

CREATE TABLE chainsync.events (
    chain_id     bigint NOT NULL,
    tx_hash      text NOT NULL,
    log_index    bigint NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    contract     text NOT NULL,
    event        text NOT NULL,
    args         jsonb NOT NULL,
    ingested_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY LIST (chain_id);
CREATE TABLE chainsync.events_default PARTITION OF chainsync.events DEFAULT;

CREATE TABLE chainsync.points_history (
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    window_start timestamptz NOT NULL,
    twab         numeric(78,0) NOT NULL,
    points       numeric(78,0) NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    job_id       uuid
) PARTITION BY RANGE (window_start);

-- Chains of the old rows: their periods and tables first, so that the rows go straight there.
DO $$
DECLARE
    chain bigint;
    first_month timestamptz;
    m timestamptz;
BEGIN
    FOR chain IN SELECT DISTINCT chain_id FROM chainsync.balance_changes_unpartitioned
                 UNION SELECT DISTINCT chain_id FROM chainsync.events_unpartitioned ORDER BY 1 LOOP
        INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block, from_time, closed_at)
        SELECT 'balance_changes', chain, l.from_block, l.to_block, l.from_time, l.closed_at
        FROM chainsync.history_layout('balance_changes_unpartitioned', chain, 216000) l;
        IF NOT FOUND THEN
            INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block)
            SELECT 'balance_changes', chain, v, v + 216000
            FROM (SELECT least((SELECT min(block_number) FROM chainsync.balance_changes_unpartitioned WHERE chain_id = chain),
                               (SELECT min(block_number) FROM chainsync.events_unpartitioned WHERE chain_id = chain)) AS v) x;
        END IF;
        INSERT INTO chainsync.history_periods (parent, chain_id, from_block, to_block, from_time, closed_at)
        SELECT 'events', chain, from_block, to_block, from_time, closed_at
        FROM chainsync.history_periods WHERE parent = 'balance_changes' AND chain_id = chain;
        PERFORM chainsync.history_chain_create('balance_changes', chain, NULL);
        PERFORM chainsync.history_chain_create('events', chain, NULL);
    END LOOP;

    SELECT date_trunc('month', least(min(window_start), now())) INTO first_month
    FROM chainsync.points_history_unpartitioned;
    EXECUTE format('CREATE TABLE chainsync.points_history_low PARTITION OF chainsync.points_history
                    FOR VALUES FROM (MINVALUE) TO (%L)', first_month);
    m := first_month;
    WHILE m <= date_trunc('month', now()) + interval '1 month' LOOP
        EXECUTE format('CREATE TABLE chainsync.%I PARTITION OF chainsync.points_history FOR VALUES FROM (%L) TO (%L)',
                       'points_history_p' || to_char(m, 'YYYYMM'), m, m + interval '1 month');
        INSERT INTO chainsync.points_history_months VALUES (m);
        m := m + interval '1 month';
    END LOOP;
    EXECUTE format('CREATE TABLE chainsync.points_history_high PARTITION OF chainsync.points_history
                    FOR VALUES FROM (%L) TO (MAXVALUE)', m);
END
$$;

INSERT INTO chainsync.balance_changes OVERRIDING SYSTEM VALUE
SELECT id, chain_id, token, address, old_amount, new_amount, block_number, block_hash, block_time,
       observed_at, source
FROM chainsync.balance_changes_unpartitioned;
SELECT setval(pg_get_serial_sequence('chainsync.balance_changes', 'id'),
              greatest(1, (SELECT max(id) FROM chainsync.balance_changes_unpartitioned)));
INSERT INTO chainsync.events
SELECT chain_id, tx_hash, log_index, block_number, block_hash, contract, event, args, ingested_at
FROM chainsync.events_unpartitioned;
INSERT INTO chainsync.points_history
SELECT chain_id, token, address, window_start, twab, points, computed_at, job_id
FROM chainsync.points_history_unpartitioned;

DROP TABLE chainsync.balance_changes_unpartitioned;
DROP TABLE chainsync.events_unpartitioned;
DROP TABLE chainsync.points_history_unpartitioned;

-- Indexes after the rows (one build per partition).
CREATE UNIQUE INDEX balance_changes_block_key
    ON chainsync.balance_changes (chain_id, token, address, block_number);
-- Points read the changes of one token by chain time, coalesce(block_time, observed_at): indexed as
-- such (the old index on block_time alone served none of those reads).
CREATE INDEX balance_changes_time_idx
    ON chainsync.balance_changes (chain_id, token, (coalesce(block_time, observed_at)));
ALTER TABLE chainsync.events ADD PRIMARY KEY (chain_id, tx_hash, log_index, block_number);
CREATE INDEX events_block_idx ON chainsync.events (chain_id, block_number);
ALTER TABLE chainsync.points_history ADD PRIMARY KEY (chain_id, token, address, window_start);
CREATE INDEX points_history_latest_idx ON chainsync.points_history (chain_id, token, window_start);
ANALYZE chainsync.balance_changes;
ANALYZE chainsync.events;
ANALYZE chainsync.points_history;

-- Finished jobs (completed, cancelled) leave the hot table for `chainsync.finished_jobs`,
-- partitioned by `finished_at` in ranges whose width follows the retention (about a 12th of it,
-- between a minute and 7 days): retention drops whole partitions instead of deleting rows, and
-- `chainsync.jobs` only ever holds work that can still run (available, running).
--
-- `finished_jobs` has the columns of `jobs` in the same order (a column added to `jobs` is added
-- to both, and `chainsync.all_jobs` made again). Readers of every state use `chainsync.all_jobs`.
-- Rows outside every range land in the DEFAULT partition (a range not created yet, rows older
-- than the first range); the maintenance pass moves them into their range when it creates it, and
-- deletes the old ones row by row.

CREATE TABLE chainsync.finished_jobs (LIKE chainsync.jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (finished_at);
ALTER TABLE chainsync.finished_jobs ALTER COLUMN finished_at SET NOT NULL;
ALTER TABLE chainsync.finished_jobs ALTER COLUMN state DROP DEFAULT;
ALTER TABLE chainsync.finished_jobs
    ADD CONSTRAINT finished_jobs_finished CHECK (state IN ('completed', 'cancelled'));
CREATE TABLE chainsync.finished_jobs_default PARTITION OF chainsync.finished_jobs DEFAULT;

-- The ranges, lowest first.
CREATE TABLE chainsync.finished_job_partitions (
    from_time timestamptz PRIMARY KEY,
    to_time   timestamptz NOT NULL CHECK (to_time > from_time),
    name      text NOT NULL UNIQUE
);

-- The width of a range for a retention: the largest of a fixed list of widths (each dividing a
-- day, or a week) not above a 12th of the retention: about 12 ranges are kept (a query of every
-- job plans each). Ranges are aligned on multiples of their width since the Unix epoch (whole
-- hours, days at midnight UTC).
CREATE FUNCTION chainsync.finished_jobs_width(retention interval) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(max(w), interval '1 minute')
    FROM unnest(ARRAY[interval '1 minute', interval '2 minutes', interval '5 minutes',
                      interval '10 minutes', interval '15 minutes', interval '30 minutes',
                      interval '1 hour', interval '2 hours',
                      interval '3 hours', interval '4 hours', interval '6 hours',
                      interval '12 hours', interval '1 day', interval '7 days']) w
    WHERE w * 12 <= retention
$$;

CREATE FUNCTION chainsync.finished_jobs_floor(t timestamptz, width interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM t) / extract(epoch FROM width))
                        * extract(epoch FROM width))
$$;

-- Creates the ranges up to `p_now` plus three widths (at least an hour, or 12 widths) ahead
-- (without `ahead`: up to the range holding `p_now`), for a retention of `retention`. Without any
-- range yet the first starts at `p_start` (or the oldest row of the DEFAULT partition not past
-- the retention, or `p_now`), rounded down, and ranges of the width follow. A gap since the last
-- range (no pass for a while) is closed by one range up to `p_now`. Rows of the DEFAULT partition
-- that belong to a new range move into it. Returns the ranges created. The caller serializes
-- passes (an advisory lock).
CREATE FUNCTION chainsync.finished_jobs_prepare(p_now timestamptz, retention interval,
                                                p_start timestamptz DEFAULT NULL,
                                                ahead boolean DEFAULT true)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    width interval := chainsync.finished_jobs_width(retention);
    horizon timestamptz := p_now + CASE WHEN ahead
                                        THEN greatest(3 * width, least(12 * width, interval '1 hour'))
                                        ELSE interval '0' END;
    created int := 0;
    lo timestamptz;
    hi timestamptz;
    part text;
    fresh boolean;
BEGIN
    SELECT max(to_time) INTO lo FROM chainsync.finished_job_partitions;
    fresh := lo IS NULL;
    IF fresh THEN
        lo := chainsync.finished_jobs_floor(
            least(coalesce(p_start,
                           (SELECT greatest(min(finished_at), p_now - retention)
                              FROM chainsync.finished_jobs_default HAVING count(*) > 0),
                           p_now), p_now),
            width);
    END IF;
    WHILE lo < horizon LOOP
        hi := chainsync.finished_jobs_floor(lo, width) + width;
        IF NOT fresh AND hi < chainsync.finished_jobs_floor(p_now, width) THEN
            hi := chainsync.finished_jobs_floor(p_now, width);
        END IF;
        part := 'finished_jobs_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MI');
        EXECUTE format('CREATE TABLE chainsync.%I
                        (LIKE chainsync.finished_jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        -- A range that has begun may have rows in the DEFAULT partition, and get more until it is
        -- attached: they move, with the table held. Attaching takes a weaker lock on the parent
        -- than readers need: a query planned before the attach would run after it and see the
        -- moved rows in neither place, so no query of the table runs until this transaction
        -- ends. Ranges ahead of the clock (every range of a pass keeping up) attach without it.
        IF lo <= p_now OR EXISTS (SELECT 1 FROM chainsync.finished_jobs_default
                                  WHERE finished_at >= lo AND finished_at < hi) THEN
            LOCK TABLE chainsync.finished_jobs IN ACCESS EXCLUSIVE MODE;
            EXECUTE format('WITH m AS (DELETE FROM chainsync.finished_jobs_default
                                       WHERE finished_at >= $1 AND finished_at < $2 RETURNING *)
                            INSERT INTO chainsync.%I SELECT * FROM m', part) USING lo, hi;
        END IF;
        EXECUTE format('ALTER TABLE chainsync.finished_jobs ATTACH PARTITION chainsync.%I
                        FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        INSERT INTO chainsync.finished_job_partitions VALUES (lo, hi, part);
        created := created + 1;
        lo := hi;
    END LOOP;
    RETURN created;
END
$$;

-- Retention: drops the ranges that end by `cutoff` and deletes rows of the DEFAULT partition
-- finished before it (at most `batch`). Returns the ranges dropped, the jobs they held and the
-- rows deleted from the DEFAULT partition.
CREATE FUNCTION chainsync.finished_jobs_retain(cutoff timestamptz, batch int,
                                               OUT dropped int, OUT removed bigint, OUT strays bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    n bigint;
BEGIN
    dropped := 0;
    removed := 0;
    IF EXISTS (SELECT 1 FROM chainsync.finished_job_partitions WHERE to_time <= cutoff) THEN
        -- Dropping takes this lock anyway; taken first, no job lands in a range between its count
        -- and its drop (a clock behind the cutoff), and no lock is waited for out of order.
        LOCK TABLE chainsync.finished_jobs IN ACCESS EXCLUSIVE MODE;
    END IF;
    FOR p IN SELECT * FROM chainsync.finished_job_partitions WHERE to_time <= cutoff ORDER BY from_time LOOP
        EXECUTE format('SELECT count(*) FROM chainsync.%I', p.name) INTO n;
        EXECUTE format('DROP TABLE chainsync.%I', p.name);
        DELETE FROM chainsync.finished_job_partitions WHERE from_time = p.from_time;
        dropped := dropped + 1;
        removed := removed + n;
    END LOOP;
    DELETE FROM chainsync.finished_jobs_default
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM chainsync.finished_jobs_default
                           WHERE finished_at < cutoff LIMIT batch));
    GET DIAGNOSTICS strays = ROW_COUNT;
END
$$;

-- The existing finished rows: ranges over their span first (the width of a retention as long as
-- the span), then the rows go straight into them. Nothing ahead: the first maintenance pass makes
-- the ranges of the next completions with the configured retention's width (until then they
-- land in the DEFAULT partition, and move into their range when the pass creates it).
SELECT chainsync.finished_jobs_prepare(now(), greatest(now() - min(finished_at), interval '1 day'),
                                       min(finished_at), false)
FROM chainsync.jobs WHERE state IN ('completed', 'cancelled')
HAVING count(*) > 0;

INSERT INTO chainsync.finished_jobs
SELECT * FROM chainsync.jobs WHERE state IN ('completed', 'cancelled');
DELETE FROM chainsync.jobs WHERE state IN ('completed', 'cancelled');
DROP INDEX chainsync.jobs_finished_idx;
ALTER TABLE chainsync.jobs ADD CONSTRAINT jobs_live CHECK (state IN ('available', 'running'));

-- A job page by id, listings newest first (ids are time-ordered), activity by finish time.
CREATE INDEX finished_jobs_id_idx ON chainsync.finished_jobs (id);
CREATE INDEX finished_jobs_finished_idx ON chainsync.finished_jobs (finished_at);
ANALYZE chainsync.finished_jobs;

-- Every job still known, live or finished.
CREATE VIEW chainsync.all_jobs AS
    SELECT * FROM chainsync.jobs
    UNION ALL
    SELECT * FROM chainsync.finished_jobs;

-- Moves live jobs (available or running) of `ids` to the finished jobs as `outcome`; returns the
-- ids moved. A running job's eventual outcome is then refused by fencing (its lease is gone).
CREATE FUNCTION chainsync.finish_jobs(ids uuid[], outcome chainsync.job_state) RETURNS SETOF uuid
LANGUAGE sql VOLATILE AS $$
    WITH m AS (
        DELETE FROM chainsync.jobs j WHERE j.id = ANY(ids)
        RETURNING j.*
    )
    INSERT INTO chainsync.finished_jobs
    SELECT id, kind, queue, args, priority, outcome, attempt, max_attempts, backoff_base_ms,
           backoff_cap_ms, run_at, NULL, NULL, unique_key, errors, created_at, started_at, now(),
           unique_while_running, traceparent
    FROM m
    RETURNING id
$$;

-- Queues finished jobs of `ids` again (available now, attempts and errors kept); with
-- `skip_held`, jobs whose unique key another queued job holds stay where they are (without it,
-- such a job raises a unique violation). Returns the ids queued.
CREATE FUNCTION chainsync.requeue_finished(ids uuid[], skip_held boolean) RETURNS SETOF uuid
LANGUAGE sql VOLATILE AS $$
    WITH m AS (
        DELETE FROM chainsync.finished_jobs f
        WHERE f.id = ANY(ids)
          AND (NOT skip_held OR f.unique_key IS NULL OR chainsync.unique_holder(f.unique_key) IS NULL)
        RETURNING f.*
    )
    INSERT INTO chainsync.jobs
    SELECT id, kind, queue, args, priority, 'available', attempt, max_attempts, backoff_base_ms,
           backoff_cap_ms, now(), NULL, NULL, unique_key, errors, created_at, started_at, NULL,
           unique_while_running, traceparent
    FROM m
    RETURNING id
$$;

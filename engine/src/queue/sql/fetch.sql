-- Take up to $2 runnable jobs of queue $1 for worker $3, leased for $4 milliseconds.
-- SKIP LOCKED lets any number of workers fetch concurrently without waiting on each other; the
-- attempt bump plus lease_owner is the fencing token a completion must present.
-- The ids are gathered first (an InitPlan) and the update finds them by primary key: no join for
-- the planner to turn into a scan of the whole table when the statistics are stale.
-- Limits: with none (nothing in chainsync.queues controls the queue, no kind limited in
-- chainsync.kind_limits: two probes of small tables) the statement takes jobs in queue order.
-- Otherwise chainsync.fetch_plan() decides, once per statement: either the limits hold nothing
-- back (shared for this transaction; the kinds limited without due jobs here are left out, the
-- jobs of limited kinds flagged `limited`, the buckets of rated kinds charged), or the statement
-- takes nothing and returns one row with `control = 'controlled'`, and the caller uses
-- chainsync.fetch_controlled() instead.
WITH control AS MATERIALIZED (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM chainsync.queues c WHERE c.queue = $1 AND c.controlled)
          OR EXISTS (SELECT 1 FROM chainsync.kind_limits l WHERE l.active)
        THEN chainsync.fetch_plan($1, $2::int)
        ELSE ROW(false, '{}'::text[], '{}'::text[], false, '{}'::text[])::chainsync.fetch_plan
    END AS p
),
taken AS (
    UPDATE chainsync.jobs
    SET state = 'running',
        attempt = attempt + 1,
        lease_owner = $3,
        lease_expires_at = now() + make_interval(secs => $4::double precision / 1000),
        started_at = now()
    WHERE id = ANY(ARRAY(
        SELECT id FROM chainsync.jobs
        WHERE state = 'available' AND queue = $1 AND run_at <= now()
          AND NOT (SELECT (p).controlled FROM control)
          AND kind <> ALL(coalesce((SELECT (p).skip FROM control), '{}'))
        ORDER BY priority, run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id, kind, queue, args, attempt, max_attempts, backoff_base_ms, backoff_cap_ms,
              traceparent
),
-- The buckets of the rated kinds (locked by chainsync.fetch_plan) pay for what was taken.
charge AS (
    UPDATE chainsync.kind_limits l
    SET tokens = chainsync.bucket_level(l.tokens, l.burst, l.rate, l.refilled_at, clock_timestamp()) - t.n,
        refilled_at = clock_timestamp()
    FROM (SELECT kind, count(*) AS n FROM taken
          WHERE kind = ANY(coalesce((SELECT (p).rated FROM control), '{}'))
          GROUP BY kind) t
    WHERE l.kind = t.kind AND l.rate IS NOT NULL
)
SELECT id, kind, queue, args, attempt, max_attempts, backoff_base_ms, backoff_cap_ms,
       (SELECT (p).queue_limited OR kind = ANY((p).locked) FROM control) AS limited,
       NULL::text AS control, NULL::int AS retry_ms, traceparent
FROM taken
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'controlled', NULL, NULL
FROM control WHERE (p).controlled

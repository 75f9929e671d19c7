-- Bulk insert when no job has a unique key, a run_at, a backoff override or a traceparent (the
-- common bulk case): no conflict can happen, so no ON CONFLICT and nothing to return (the ids are the caller's), and
-- only the columns that vary are sent.
INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[])

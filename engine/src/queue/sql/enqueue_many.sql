-- Bulk insert in one round trip. Jobs whose unique key is held (see chainsync.unique_holder) are
-- skipped here and resolved to the holder's id by the caller.
INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                            backoff_base_ms, backoff_cap_ms, unique_while_running, traceparent)
SELECT id, kind, queue, args, priority, max_attempts, coalesce(run_at, now()), unique_key,
       backoff_base_ms, backoff_cap_ms, while_running, traceparent
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[], $9::bigint[], $10::bigint[], $11::bool[], $12::text[])
     AS t(id, kind, queue, args, priority, max_attempts, run_at, unique_key, backoff_base_ms,
          backoff_cap_ms, while_running, traceparent)
ON CONFLICT DO NOTHING
RETURNING id

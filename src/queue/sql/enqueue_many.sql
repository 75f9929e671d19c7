-- Bulk insert in one round trip. Duplicates of an active unique key are skipped here and
-- resolved to the existing job's id by the caller.
INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                            backoff_base_ms, backoff_cap_ms)
SELECT id, kind, queue, args, priority, max_attempts, coalesce(run_at, now()), unique_key,
       backoff_base_ms, backoff_cap_ms
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[], $9::bigint[], $10::bigint[])
     AS t(id, kind, queue, args, priority, max_attempts, run_at, unique_key, backoff_base_ms, backoff_cap_ms)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running') DO NOTHING
RETURNING id

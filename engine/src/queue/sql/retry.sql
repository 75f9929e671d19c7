-- Failed runs with attempts left: back to 'available' at the persisted backoff time, with the
-- error appended to the history (with the attempt's start, `started_at` of this run). Snoozes come through here too, with the attempt given back.
-- Fenced as in complete_delete.sql; the join to the per-job values is on the primary key. The
-- lease is tested through the token rather than `lease_owner = $n`, whose estimate (one row)
-- would make the planner rescan the value list once per job.
UPDATE chainsync.jobs j
SET state = 'available',
    run_at = now() + make_interval(secs => d.delay_ms::double precision / 1000),
    attempt = j.attempt - d.refund,
    errors = CASE WHEN d.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(d.error || jsonb_build_object('started_at', j.started_at)) END,
    lease_owner = NULL,
    lease_expires_at = NULL
FROM unnest($1::uuid[], $3::bigint[], $4::int[], $5::jsonb[]) AS d(id, delay_ms, refund, error)
WHERE j.id = ANY($1::uuid[]) AND j.id = d.id
  AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY($2::text[])

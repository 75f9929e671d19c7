-- Successful runs, finished jobs retained until the pruner removes them. Fenced as in
-- complete_delete.sql.
UPDATE chainsync.jobs j
SET state = 'completed', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int[]) AS d(id, attempt)
WHERE j.id = ANY($1::uuid[]) AND j.id = d.id AND j.attempt = d.attempt AND j.lease_owner = $3

-- Successful runs, finished jobs retained until the pruner removes them. Fenced as in
-- complete_delete.sql.
UPDATE chainsync.jobs j
SET state = 'completed', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE j.id = ANY($1::uuid[])
  AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY($2::text[])

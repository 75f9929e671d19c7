-- Extend the leases of the jobs this worker still holds ($3: the ids it fetched and has not yet
-- written an outcome for). Only those: a job whose fetch committed while its answer was lost
-- (connection cut, failover), or whose outcome could not be written, is not held, so its lease
-- runs out and the rescuer requeues it.
UPDATE chainsync.jobs
SET lease_expires_at = now() + make_interval(secs => $2::double precision / 1000)
WHERE id = ANY($3) AND state = 'running' AND lease_owner = $1

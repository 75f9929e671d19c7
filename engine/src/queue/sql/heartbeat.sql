-- Extend the leases of every job this worker still runs. The running set is small (bounded by
-- the total concurrency), so the partial index on running rows makes this cheap.
UPDATE chainsync.jobs
SET lease_expires_at = now() + make_interval(secs => $2::double precision / 1000)
WHERE state = 'running' AND lease_owner = $1

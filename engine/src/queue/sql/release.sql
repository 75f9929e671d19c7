-- Graceful shutdown: give back jobs this worker fetched but did not finish, without using an
-- attempt, so another worker picks them up at once.
UPDATE chainsync.jobs
SET state = 'available', attempt = greatest(attempt - 1, 0), run_at = now(),
    lease_owner = NULL, lease_expires_at = NULL
WHERE state = 'running' AND lease_owner = $1

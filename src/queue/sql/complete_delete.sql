-- Successful runs, finished jobs not retained: delete them so the hot table stays small.
-- Only rows still leased by this worker at the same attempt match: a job the rescuer took away
-- (and maybe another worker re-ran) is not completed twice.
DELETE FROM chainsync.jobs j
USING unnest($1::uuid[], $2::int[]) AS d(id, attempt)
WHERE j.id = d.id AND j.attempt = d.attempt AND j.state = 'running' AND j.lease_owner = $3

-- Successful runs, finished jobs not retained: delete them so the hot table stays small.
-- Only rows still leased by this worker at the same attempt match: a job the rescuer took away
-- (and maybe another worker re-ran) is not completed twice. A lease implies state 'running'
-- (constraint jobs_lease_iff_running), so the state need not be named; `id = ANY($1)` gives the
-- planner a primary-key condition whatever it believes about the table's size.
DELETE FROM chainsync.jobs j
USING unnest($1::uuid[], $2::int[]) AS d(id, attempt)
WHERE j.id = ANY($1::uuid[]) AND j.id = d.id AND j.attempt = d.attempt AND j.lease_owner = $3

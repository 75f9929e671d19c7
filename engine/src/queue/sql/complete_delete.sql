-- Successful runs, finished jobs not retained: delete them so the hot table stays small.
-- $1: ids, $2: their lease tokens (chainsync.lease_token of id, attempt and worker, as the
-- worker holds them). Only rows still leased by this worker at the same attempt match: a job the rescuer took away (and maybe another
-- worker re-ran) is not completed twice. A lease implies state 'running' (constraint
-- jobs_lease_iff_running), so the state need not be named. `id = ANY($1)` is the index
-- condition whatever the planner believes about the table's size; the tokens come as a parameter
-- so the test is a hashed lookup per row (an array computed inside the statement would be
-- searched linearly), no join for the planner to get wrong.
DELETE FROM chainsync.jobs j
WHERE j.id = ANY($1::uuid[])
  AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY($2::text[])

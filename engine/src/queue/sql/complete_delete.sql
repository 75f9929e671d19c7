-- Successful runs, finished jobs not retained: delete them so the hot table stays small.
-- $1: ids, $2: their attempts, $3: the worker (lease owner). Only rows still leased by this
-- worker at the same attempt (chainsync.lease_token) match: a job the rescuer took away (and maybe another
-- worker re-ran) is not completed twice. A lease implies state 'running' (constraint
-- jobs_lease_iff_running), so the state need not be named. `id = ANY($1)` is the index
-- condition whatever the planner believes about the table's size; the tokens are computed once
-- (an InitPlan) and the test is a lookup per row, no join for the planner to get wrong.
DELETE FROM chainsync.jobs j
WHERE j.id = ANY($1::uuid[])
  AND chainsync.lease_token(j.id, j.attempt, j.lease_owner) = ANY(ARRAY(
      SELECT chainsync.lease_token(t.id, t.attempt, $3::uuid) FROM unnest($1::uuid[], $2::int[]) AS t(id, attempt)))

-- A job holds a lease exactly while it is running. With this in the schema, the fencing predicate
-- of an outcome (id, attempt, lease_owner) implies state = 'running', so outcome statements need
-- not name the state: they then find their rows by primary key instead of walking
-- jobs_running_idx, whose dead entries pile up between vacuums under a heavy drain.
ALTER TABLE chainsync.jobs
    ADD CONSTRAINT jobs_lease_iff_running CHECK ((state = 'running') = (lease_owner IS NOT NULL));

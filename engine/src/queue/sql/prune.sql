-- Delete finished jobs older than the retention, in bounded batches to keep locks short.
DELETE FROM chainsync.jobs
WHERE id = ANY(ARRAY(
    SELECT id FROM chainsync.jobs
    WHERE state IN ('completed', 'cancelled') AND finished_at < now() - make_interval(secs => $1::double precision)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))

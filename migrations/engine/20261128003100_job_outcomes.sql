-- Attempts per kind and minute, as counted by each daemon process (ok: succeeded; failed: retry
-- or fatal; snoozes are neither). Each process writes its own absolute counts, so a repeated
-- write changes nothing; the failure-rate alert sums every process's rows over its window.
-- Rows older than a day are dropped by the writers.
CREATE TABLE chainsync.job_outcomes (
    kind    text NOT NULL,
    minute  timestamptz NOT NULL,
    process uuid NOT NULL,
    ok      bigint NOT NULL CHECK (ok >= 0),
    failed  bigint NOT NULL CHECK (failed >= 0),
    PRIMARY KEY (kind, minute, process)
);
CREATE INDEX job_outcomes_minute_idx ON chainsync.job_outcomes (minute);

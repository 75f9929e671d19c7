-- Alert incidents: one row per (rule, subject) from the moment a rule fires until it clears.
-- At most one open incident per (rule, subject); the notifications are deliver-alert jobs
-- enqueued in the same transaction as the insert (firing) and the update (resolved).
CREATE TABLE chainsync.alert_incidents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule        text NOT NULL,
    kind        text NOT NULL,
    subject     text NOT NULL,
    summary     text NOT NULL,
    value       double precision,
    threshold   double precision NOT NULL,
    opened_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    CHECK (resolved_at IS NULL OR resolved_at >= opened_at)
);
CREATE UNIQUE INDEX alert_incidents_open_idx
    ON chainsync.alert_incidents (rule, subject) WHERE resolved_at IS NULL;
CREATE INDEX alert_incidents_resolved_idx
    ON chainsync.alert_incidents (rule, subject, resolved_at DESC);

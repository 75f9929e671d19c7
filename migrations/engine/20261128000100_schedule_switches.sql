-- Schedules switched off or on at runtime (console, `chainsync schedule enable|disable`), for
-- every daemon on this database: a row here wins over the config's `enabled`. Each scheduler
-- reads the rows at every pass; a switched-off schedule claims no tick and enqueues nothing.
-- Switched back on, it runs the ticks from `changed_at` on: a tick that fell while it was off is
-- never run (catch_up included).
CREATE TABLE chainsync.schedule_switches (
    schedule   text PRIMARY KEY,
    enabled    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text
);

-- A claim made by "run now" (console, CLI) rather than by the schedule's own tick: `tick` is the
-- time of the request.
ALTER TABLE chainsync.cron_claims ADD COLUMN manual boolean NOT NULL DEFAULT false;

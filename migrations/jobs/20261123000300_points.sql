-- Points per (chain, token, address, hourly window): computed once from balance_changes.
CREATE TABLE chainsync.points_history (
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    window_start timestamptz NOT NULL,
    -- time-weighted average balance over the window, base units, floored
    twab         numeric(78,0) NOT NULL,
    -- floor(twab × rate)
    points       numeric(78,0) NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    job_id       uuid,
    PRIMARY KEY (chain_id, token, address, window_start)
);
CREATE INDEX points_history_latest_idx ON chainsync.points_history (chain_id, token, window_start);

-- RPC budgets shared by every daemon (jobs/src/chain/budget).
--
-- Daemons that use an endpoint find each other here: each one upserts its row every heartbeat
-- while it uses the endpoint, and without Redis takes budget / (live members). Rows not seen for
-- `rpc_budget.member_ttl` no longer count and are deleted later by any member. Lost on a crash
-- of Postgres (unlogged) and rebuilt within one heartbeat.
CREATE UNLOGGED TABLE chainsync.rpc_budget_members (
    endpoint  text NOT NULL,
    member    uuid NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, member)
);

-- The adaptive factor of an endpoint after rate-limit answers (Postgres mode; Redis mode keeps
-- it in Redis): per mille of the budget as of `since` (the last rate-limit answer), held for
-- `rpc_budget.hold`, then recovering linearly over `rpc_budget.recovery`. `paused_until` holds
-- every daemon back after a provider's Retry-After.
CREATE TABLE chainsync.rpc_budget_state (
    endpoint        text PRIMARY KEY,
    factor_permille int NOT NULL DEFAULT 1000 CHECK (factor_permille BETWEEN 1 AND 1000),
    since           timestamptz NOT NULL DEFAULT now(),
    cut_at          timestamptz,
    paused_until    timestamptz NOT NULL DEFAULT '-infinity'
);

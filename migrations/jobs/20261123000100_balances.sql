-- Balance domain tables: tracked addresses and transactions, balances with their history,
-- reconciliation results and repairs, and the checkpoints of resumable full syncs.
--
-- Conventions: addresses are lower-case 0x-prefixed hex text; a token is such an address or
-- 'native'; amounts are NUMERIC(78,0) (a uint256 fits); block hashes are lower-case hex text.
CREATE SCHEMA IF NOT EXISTS chainsync;

-- Addresses the app registered (CLI `tracked addresses add|remove|import`, Rust API, SQL insert).
-- An address is tracked on every configured chain.
CREATE TABLE chainsync.tracked_addresses (
    address  text PRIMARY KEY CHECK (address ~ '^0x[0-9a-f]{40}$'),
    label    text,
    source   text NOT NULL DEFAULT 'sql',
    added_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chainsync.balances (
    chain_id     bigint NOT NULL,
    token        text NOT NULL CHECK (token = 'native' OR token ~ '^0x[0-9a-f]{40}$'),
    address      text NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    amount       numeric(78,0) NOT NULL CHECK (amount >= 0),
    -- the block the amount was read at; a result of an older block never overwrites it
    block_number bigint NOT NULL CHECK (block_number >= 0),
    block_hash   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, token, address)
);
-- GET /v1/balances/{chain}/{address}: every token of one holder.
CREATE INDEX balances_holder_idx ON chainsync.balances (chain_id, address);

-- One row per change of a stored amount (the first observation has old_amount NULL). Points and
-- time-weighted averages are computed from this table.
CREATE TABLE chainsync.balance_changes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    old_amount   numeric(78,0),
    new_amount   numeric(78,0) NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    -- timestamp of the block the new amount was read at
    block_time   timestamptz,
    observed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX balance_changes_key_idx
    ON chainsync.balance_changes (chain_id, token, address, block_number);

-- Differences found by reconcile-chain: stored vs on-chain at one block. Unique per block so a
-- replayed reconcile records each difference once.
CREATE TABLE chainsync.balance_mismatches (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id       bigint NOT NULL,
    token          text NOT NULL,
    address        text NOT NULL,
    -- NULL when the address is tracked but has no stored balance
    stored_amount  numeric(78,0),
    stored_block   bigint,
    chain_amount   numeric(78,0) NOT NULL,
    -- chain_amount - stored_amount (stored NULL counts as 0)
    difference     numeric(79,0) NOT NULL,
    above_threshold boolean NOT NULL,
    block_number   bigint NOT NULL,
    block_hash     text NOT NULL,
    job_id         uuid,
    found_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain_id, token, address, block_number)
);
CREATE INDEX balance_mismatches_found_idx ON chainsync.balance_mismatches (found_at);

-- Audit of every correction made by reconcile-chain (auto_repair); one per mismatch.
CREATE TABLE chainsync.balance_repairs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mismatch_id  bigint NOT NULL UNIQUE REFERENCES chainsync.balance_mismatches (id) ON DELETE CASCADE,
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    old_amount   numeric(78,0),
    new_amount   numeric(78,0) NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    reason       text NOT NULL,
    job_id       uuid,
    repaired_at  timestamptz NOT NULL DEFAULT now()
);

-- Transactions the app submitted and wants followed (check-pending-tx).
--   pending   registered, not seen by the node yet
--   submitted known to the node (in the mempool, or mined with too few confirmations)
--   confirmed mined, succeeded, N confirmations, block hash still canonical
--   failed    mined and reverted, N confirmations
--   stuck     not confirmed within max_pending_time (still followed)
CREATE TABLE chainsync.tracked_txs (
    chain_id      bigint NOT NULL,
    hash          text NOT NULL CHECK (hash ~ '^0x[0-9a-f]{64}$'),
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'submitted', 'confirmed', 'failed', 'stuck')),
    -- addresses the tx touches: given at registration, completed from the receipt
    addresses     text[] NOT NULL DEFAULT '{}',
    first_seen    timestamptz NOT NULL DEFAULT now(),
    submitted_at  timestamptz,
    block_number  bigint,
    block_hash    text,
    confirmations bigint NOT NULL DEFAULT 0,
    finished_at   timestamptz,
    last_checked  timestamptz,
    error         text,
    PRIMARY KEY (chain_id, hash)
);
CREATE INDEX tracked_txs_open_idx ON chainsync.tracked_txs (chain_id, first_seen)
    WHERE state IN ('pending', 'submitted', 'stuck');

-- Resumable full syncs: a run (one per job id) is pinned to one block; each written batch is
-- recorded so that a retried run skips it.
CREATE TABLE chainsync.sync_runs (
    id           uuid PRIMARY KEY,
    chain_id     bigint NOT NULL,
    scope        text NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    block_time   timestamptz,
    batch_size   int NOT NULL,
    total_items  bigint NOT NULL DEFAULT 0,
    failed_items bigint NOT NULL DEFAULT 0,
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE chainsync.sync_batches (
    run_id      uuid NOT NULL REFERENCES chainsync.sync_runs (id) ON DELETE CASCADE,
    batch_index int NOT NULL,
    -- first and last (token, address) of the batch: a batch counts as done only for the same items
    first_key   text NOT NULL,
    last_key    text NOT NULL,
    items       int NOT NULL,
    failed      int NOT NULL DEFAULT 0,
    written_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, batch_index)
);

-- Balance history on the chain's timeline, points that follow it.
--
-- balance_changes: one row per (chain, token, address, block) at most, so that a replayed
-- ingestion or sync writes nothing twice; `source` says how the change was found:
--   log        a block-pinned read at a block where a Transfer/TransferSingle/TransferBatch log
--              of the token touched the holder (the change happened in that block)
--   read       a balance read at a pinned block by a sync (the change happened at or before it)
--   reconcile  found by reconcile-chain at the block it compared (no log revealed it)
ALTER TABLE chainsync.balance_changes
    ADD COLUMN source text NOT NULL DEFAULT 'read' CHECK (source IN ('log', 'read', 'reconcile'));

-- Rows of older versions may repeat a block; keep the newest of each.
DELETE FROM chainsync.balance_changes a
 USING chainsync.balance_changes b
 WHERE a.chain_id = b.chain_id AND a.token = b.token AND a.address = b.address
   AND a.block_number = b.block_number AND a.id < b.id;

DROP INDEX chainsync.balance_changes_key_idx;
CREATE UNIQUE INDEX balance_changes_block_key
    ON chainsync.balance_changes (chain_id, token, address, block_number);
-- Points read the changes of one token by time.
CREATE INDEX balance_changes_time_idx ON chainsync.balance_changes (chain_id, token, block_time);

-- The time of the checkpoint's block: points windows close by chain time.
ALTER TABLE chainsync.ingest_checkpoints ADD COLUMN block_time timestamptz;

-- Per (chain, token) with a rate: every window before computed_through has been computed for
-- every address with history (later changes of that history are handled through points_dirty).
CREATE TABLE chainsync.points_progress (
    chain_id         bigint NOT NULL,
    token            text NOT NULL,
    computed_through timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, token)
);

-- History of (chain, token, address) changed from `since` on after points may have been computed
-- from it (late history after an outage, a reorg, a reconcile): its windows from `since` on are
-- recomputed. `marked_at` moves with every new mark so that a recompute deletes only the mark it saw.
CREATE TABLE chainsync.points_dirty (
    chain_id  bigint NOT NULL,
    token     text NOT NULL,
    address   text NOT NULL,
    since     timestamptz NOT NULL,
    reason    text NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (chain_id, token, address)
);

-- Every change of an already computed (credited) window: old and new values and why.
CREATE TABLE chainsync.points_audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id     bigint NOT NULL,
    token        text NOT NULL,
    address      text NOT NULL,
    window_start timestamptz NOT NULL,
    old_twab     numeric(78,0) NOT NULL,
    old_points   numeric(78,0) NOT NULL,
    new_twab     numeric(78,0) NOT NULL,
    new_points   numeric(78,0) NOT NULL,
    reason       text NOT NULL,
    job_id       uuid,
    changed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX points_audit_window_idx
    ON chainsync.points_audit (chain_id, token, address, window_start);

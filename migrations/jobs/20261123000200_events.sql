-- Event ingestion: checkpoints, recent block hashes (reorg detection), decoded events, and the
-- referral graph derived from ReferralRegistered events.
CREATE TABLE chainsync.ingest_checkpoints (
    chain_id     bigint PRIMARY KEY,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Hashes of ingested blocks; compared with the chain to find the common ancestor after a reorg.
CREATE TABLE chainsync.block_hashes (
    chain_id     bigint NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    PRIMARY KEY (chain_id, block_number)
);

-- One row per decoded log; (chain, tx, log index) makes a re-ingested range a no-op.
CREATE TABLE chainsync.events (
    chain_id     bigint NOT NULL,
    tx_hash      text NOT NULL,
    log_index    bigint NOT NULL,
    block_number bigint NOT NULL,
    block_hash   text NOT NULL,
    contract     text NOT NULL,
    event        text NOT NULL,
    args         jsonb NOT NULL,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX events_block_idx ON chainsync.events (chain_id, block_number);

-- Referral graph: the first registration of a user wins. Counts are derived from these unique rows
-- (the view below), never kept as counters, so replaying a range cannot double them.
CREATE TABLE chainsync.referrals (
    chain_id     bigint NOT NULL,
    user_address text NOT NULL,
    referrer     text NOT NULL,
    block_number bigint NOT NULL,
    tx_hash      text NOT NULL,
    log_index    bigint NOT NULL,
    PRIMARY KEY (chain_id, user_address)
);
CREATE INDEX referrals_referrer_idx ON chainsync.referrals (chain_id, referrer);

CREATE VIEW chainsync.referral_graph AS
SELECT r.chain_id, r.user_address, r.referrer AS direct_referrer, up.referrer AS indirect_referrer,
       (SELECT count(*) FROM chainsync.referrals c WHERE c.chain_id = r.chain_id AND c.referrer = r.user_address) AS level1_count,
       (SELECT count(*) FROM chainsync.referrals c JOIN chainsync.referrals g
            ON g.chain_id = c.chain_id AND g.referrer = c.user_address
        WHERE c.chain_id = r.chain_id AND c.referrer = r.user_address) AS level2_count
FROM chainsync.referrals r
LEFT JOIN chainsync.referrals up ON up.chain_id = r.chain_id AND up.user_address = r.referrer;

-- Transactions in tracked_txs as applications write them on any chain: a hash with or without
-- `0x` (TRON writes transaction ids as 64 hex digits without it) in any case, and the addresses
-- it touches in any form of chainsync.normalize_address (`0x` hex, TRON base58check `T…`, `41…`).
-- A trigger stores the canonical forms (`0x` + 64 lower-case hex digits; `0x` + 40), so the
-- CHECK constraint, the primary key and every reader stay as they were; a mistyped base58check
-- address is refused with the reason, other text is left to the CHECK constraint.

CREATE FUNCTION chainsync.normalize_tx_hash(h text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN btrim(h) ~ '^(0[xX])?[0-9a-fA-F]{64}$'
                THEN '0x' || lower(right(btrim(h), 64))
                ELSE h END
$$;

COMMENT ON FUNCTION chainsync.normalize_tx_hash(text) IS
    'Canonical 0x + 64 lower-case hex digits of a hash given with or without 0x, in any case; other text unchanged';

CREATE FUNCTION chainsync.tracked_txs_normalize() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.hash := chainsync.normalize_tx_hash(NEW.hash);
    NEW.addresses := ARRAY(
        SELECT DISTINCT chainsync.normalize_address(a) FROM unnest(NEW.addresses) AS a ORDER BY 1);
    RETURN NEW;
END
$$;

CREATE TRIGGER tracked_txs_normalize
    BEFORE INSERT OR UPDATE OF hash, addresses ON chainsync.tracked_txs
    FOR EACH ROW EXECUTE FUNCTION chainsync.tracked_txs_normalize();

-- TRON accounts in tracked_addresses: an application may insert an address in any form a TRON
-- chain uses, base58check `T…` or hex with the `41` prefix (`41…`, `0x41…`), as well as `0x` hex
-- in any case. A trigger stores it in the one canonical form (lower-case `0x` + 40 hex digits, the
-- same 20 bytes), so the CHECK constraint and every reader stay as they were. A base58check address
-- whose checksum does not match is refused with an error that says so; anything else that is not
-- an address is left to the CHECK constraint.

-- Canonical text of an address in any of those forms; other text is returned unchanged.
CREATE FUNCTION chainsync.normalize_address(a text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t text := btrim(a);
    alphabet constant text := '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
    n numeric := 0;
    hex text := '';
    raw bytea;
    payload bytea;
BEGIN
    IF t ~ '^0[xX][0-9a-fA-F]{40}$' THEN
        RETURN lower(t);
    END IF;
    IF t ~ '^(0[xX])?41[0-9a-fA-F]{40}$' THEN
        RETURN '0x' || lower(right(t, 40));
    END IF;
    IF t ~ '^T.{33}$' AND t !~ '^T[1-9A-HJ-NP-Za-km-z]{33}$' THEN
        RAISE EXCEPTION 'invalid TRON address %: a character is not base58 (mistyped: the base58check checksum cannot match)', a
            USING ERRCODE = 'check_violation';
    END IF;
    IF t ~ '^T[1-9A-HJ-NP-Za-km-z]{33}$' THEN
        FOR i IN 1..length(t) LOOP
            n := n * 58 + (strpos(alphabet, substr(t, i, 1)) - 1);
        END LOOP;
        FOR i IN 1..25 LOOP
            hex := lpad(to_hex(mod(n, 256)::int), 2, '0') || hex;
            n := div(n, 256);
        END LOOP;
        raw := decode(hex, 'hex');
        payload := substring(raw FROM 1 FOR 21);
        IF n <> 0 OR get_byte(payload, 0) <> 65 THEN
            RAISE EXCEPTION 'invalid TRON address %: not 21 bytes starting with 0x41', a
                USING ERRCODE = 'check_violation';
        END IF;
        IF substring(sha256(sha256(payload)) FROM 1 FOR 4) <> substring(raw FROM 22 FOR 4) THEN
            RAISE EXCEPTION 'invalid TRON address %: base58check checksum is wrong (a character is mistyped)', a
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN '0x' || encode(substring(payload FROM 2), 'hex');
    END IF;
    RETURN a;
END
$$;

COMMENT ON FUNCTION chainsync.normalize_address(text) IS
    'Canonical lower-case 0x form of an address given as 0x hex (any case), TRON base58check T… or 41-prefixed hex; other text unchanged';

CREATE FUNCTION chainsync.tracked_addresses_normalize() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.address := chainsync.normalize_address(NEW.address);
    RETURN NEW;
END
$$;

CREATE TRIGGER tracked_addresses_normalize
    BEFORE INSERT OR UPDATE OF address ON chainsync.tracked_addresses
    FOR EACH ROW EXECUTE FUNCTION chainsync.tracked_addresses_normalize();

-- The fencing token of a lease, 'id/attempt/owner': an outcome is written only while the row
-- still carries the token its worker was given at fetch. One definition, used by every outcome
-- statement on both sides of the comparison; a plain SQL expression the planner inlines.
CREATE FUNCTION chainsync.lease_token(id uuid, attempt int, owner uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT id::text || '/' || attempt::text || '/' || owner::text
$$;

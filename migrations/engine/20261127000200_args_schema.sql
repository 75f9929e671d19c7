-- chainsync.enqueue() checks args as strictly as the Rust enqueuers (HTTP, CLI, Queue::enqueue),
-- which decode them into the kind's type: an unknown field, a wrong type or a missing field is an
-- error inside the caller's transaction instead of a job that dies on its first run.
--
-- Each kind's argument schema is derived from its Rust type (JSON Schema 2020-12, as schemars
-- emits it for deserialization) and stored by `Queue::sync_kinds` when migrating. A kind whose
-- row has no schema (recorded by an older binary) is not checked.
--
-- chainsync.args_error() implements the part of JSON Schema that describes what serde decodes:
--   type (one or several; "integer" is a number written without fraction or exponent, as a
--   Rust integer decodes it), properties, required, additionalProperties (false or a schema),
--   enum, const, $ref into the root ("#", "#/$defs/…"), allOf, anyOf, oneOf, not, items,
--   prefixItems, minItems, maxItems, minimum, maximum, exclusiveMinimum, exclusiveMaximum, the
--   ranges of the integer formats (uint8 … int64, uint, int) and the format date-time
--   (RFC 3339: `2024-05-01T12:00:00Z`, `…+02:00`, a valid day of the month).
-- Other keywords are annotations here, as they are to serde (pattern, lengths, descriptions).
-- What a kind checks beyond types (`Job::validate`: address checksums, from < to) is not in the
-- schema: such args pass here and are refused by the Rust enqueuers, or fail on their first run.
ALTER TABLE chainsync.kinds ADD COLUMN args_schema jsonb;

COMMENT ON COLUMN chainsync.kinds.args_schema IS
    'JSON Schema of the kind''s args, derived from its Rust type; chainsync.enqueue() checks args against it (NULL: not checked)';

-- `path` followed by object key `key`: `args.chain_id`, or `args["odd key"]`.
CREATE FUNCTION chainsync.args_path(path text, key text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN key ~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN path || '.' || key
                ELSE path || '[' || to_jsonb(key)::text || ']' END
$$;

-- A value for a message: `number 1.5`, `string "abc"`, `object`.
CREATE FUNCTION chainsync.args_describe(val jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(val)
        WHEN 'string' THEN 'string ' || CASE WHEN char_length(val #>> '{}') > 40
                                             THEN to_jsonb(left(val #>> '{}', 40))::text || '...'
                                             ELSE val::text END
        WHEN 'number' THEN 'number ' || left(val::text, 40)
        WHEN 'boolean' THEN 'boolean ' || val::text
        ELSE coalesce(jsonb_typeof(val), 'nothing') END
$$;

-- RFC 3339 date-time with a valid day of the month, hour < 24, minute < 60, second <= 60 (leap
-- second) and an offset below 24 hours: what a chrono DateTime decodes.
CREATE FUNCTION chainsync.args_is_datetime(s text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text[] := regexp_match(s,
        '^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-]([0-9]{2}):([0-9]{2}))$');
    y int;
    mo int;
    d int;
BEGIN
    IF m IS NULL THEN
        RETURN false;
    END IF;
    y := m[1]::int;
    mo := m[2]::int;
    d := m[3]::int;
    RETURN mo BETWEEN 1 AND 12
       AND d BETWEEN 1 AND CASE
               WHEN mo = 2 THEN CASE WHEN y % 4 = 0 AND (y % 100 <> 0 OR y % 400 = 0) THEN 29 ELSE 28 END
               WHEN mo IN (4, 6, 9, 11) THEN 30
               ELSE 31 END
       AND m[4]::int < 24 AND m[5]::int < 60 AND m[6]::int <= 60
       AND coalesce(m[9]::int, 0) < 24 AND coalesce(m[10]::int, 0) < 60;
END
$$;

-- After every alternative of an anyOf/oneOf refused `val`: when all of them refused its type
-- here, one message with every expected type; otherwise the error of the alternative that got
-- furthest (the deepest field; at equal depth, a wrong value before an unknown or missing field,
-- which rather says that the alternative is the wrong one).
CREATE FUNCTION chainsync.args_alternatives(path text, val jsonb, errs text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    prefix text := path || ': expected ';
    suffix text := ', got ' || chainsync.args_describe(val);
    expected text[] := '{}';
    best text;
    best_rank int;
    rank int;
    e text;
BEGIN
    FOREACH e IN ARRAY errs LOOP
        IF starts_with(e, prefix) AND right(e, char_length(suffix)) = suffix THEN
            expected := expected || substr(e, char_length(prefix) + 1,
                                           char_length(e) - char_length(prefix) - char_length(suffix));
            CONTINUE;
        END IF;
        rank := 2 * char_length(split_part(e, ': ', 1))
              + CASE WHEN e ~ ': (unknown field \(accepts: .*\)|missing field)$' THEN 0 ELSE 1 END;
        IF best IS NULL OR rank > best_rank THEN
            best := e;
            best_rank := rank;
        END IF;
    END LOOP;
    IF best IS NOT NULL THEN
        RETURN best;
    END IF;
    IF cardinality(expected) = 0 THEN
        RETURN path || ': matches none of the allowed forms';
    END IF;
    RETURN prefix || array_to_string(expected, ' or ') || suffix;
END
$$;

-- Why `val` (found at `path`) does not match `schema`, or NULL when it does. `root` resolves $ref.
CREATE FUNCTION chainsync.args_error_at(schema jsonb, val jsonb, path text, root jsonb, depth int)
RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    vt   text := jsonb_typeof(val);
    err  text;
    errs text[];
    ref  text;
    sub  jsonb;
    key  text;
    item jsonb;
    types jsonb;
    n    numeric;
    lo   numeric;
    hi   numeric;
    len  int;
    prefix_len int;
    matched int;
BEGIN
    IF schema IS NULL OR schema = 'true'::jsonb OR schema = '{}'::jsonb THEN
        RETURN NULL;
    END IF;
    IF schema = 'false'::jsonb THEN
        RETURN path || ': not allowed';
    END IF;
    IF jsonb_typeof(schema) <> 'object' THEN
        RETURN path || ': invalid schema ' || left(schema::text, 60);
    END IF;
    IF depth > 64 THEN
        RETURN path || ': schema nests too deeply';
    END IF;

    IF schema ? '$ref' THEN
        ref := schema->>'$ref';
        IF ref = '#' THEN
            sub := root;
        ELSIF starts_with(ref, '#/') THEN
            sub := root #> (SELECT array_agg(replace(replace(p, '~1', '/'), '~0', '~') ORDER BY o)
                            FROM unnest(string_to_array(substr(ref, 3), '/')) WITH ORDINALITY AS t(p, o));
        END IF;
        IF sub IS NULL THEN
            RETURN path || ': unresolvable schema reference ' || coalesce(ref, 'null');
        END IF;
        err := chainsync.args_error_at(sub, val, path, root, depth + 1);
        IF err IS NOT NULL THEN
            RETURN err;
        END IF;
    END IF;

    IF schema ? 'type' THEN
        types := CASE jsonb_typeof(schema->'type') WHEN 'array' THEN schema->'type'
                 ELSE jsonb_build_array(schema->'type') END;
        IF NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements_text(types) AS t(ty)
            WHERE ty = vt OR (ty = 'integer' AND vt = 'number' AND val::text ~ '^-?[0-9]+$'))
        THEN
            RETURN path || ': expected '
                || (SELECT string_agg(ty, ' or ') FROM jsonb_array_elements_text(types) AS t(ty))
                || ', got ' || chainsync.args_describe(val);
        END IF;
    END IF;

    IF schema ? 'enum' AND NOT EXISTS (
        SELECT 1 FROM jsonb_array_elements(schema->'enum') AS e(v) WHERE e.v = val)
    THEN
        RETURN path || ': must be one of '
            || (SELECT string_agg(e.v::text, ', ') FROM jsonb_array_elements(schema->'enum') AS e(v))
            || ', got ' || chainsync.args_describe(val);
    END IF;
    IF schema ? 'const' AND schema->'const' <> val THEN
        RETURN path || ': must be ' || (schema->'const')::text || ', got ' || chainsync.args_describe(val);
    END IF;

    IF schema ? 'allOf' THEN
        FOR sub IN SELECT value FROM jsonb_array_elements(schema->'allOf') LOOP
            err := chainsync.args_error_at(sub, val, path, root, depth + 1);
            IF err IS NOT NULL THEN
                RETURN err;
            END IF;
        END LOOP;
    END IF;
    IF schema ? 'anyOf' THEN
        errs := '{}';
        FOR sub IN SELECT value FROM jsonb_array_elements(schema->'anyOf') LOOP
            err := chainsync.args_error_at(sub, val, path, root, depth + 1);
            EXIT WHEN err IS NULL;
            errs := errs || err;
        END LOOP;
        IF err IS NOT NULL THEN
            RETURN chainsync.args_alternatives(path, val, errs);
        END IF;
    END IF;
    IF schema ? 'oneOf' THEN
        errs := '{}';
        matched := 0;
        FOR sub IN SELECT value FROM jsonb_array_elements(schema->'oneOf') LOOP
            err := chainsync.args_error_at(sub, val, path, root, depth + 1);
            IF err IS NULL THEN
                matched := matched + 1;
            ELSE
                errs := errs || err;
            END IF;
        END LOOP;
        IF matched = 0 THEN
            RETURN chainsync.args_alternatives(path, val, errs);
        ELSIF matched > 1 THEN
            RETURN path || ': matches more than one of the allowed forms';
        END IF;
    END IF;
    IF schema ? 'not' AND chainsync.args_error_at(schema->'not', val, path, root, depth + 1) IS NULL THEN
        RETURN path || ': not allowed, got ' || chainsync.args_describe(val);
    END IF;

    IF vt = 'number' THEN
        n := val::text::numeric;
        IF jsonb_typeof(schema->'minimum') = 'number' AND n < (schema->>'minimum')::numeric THEN
            RETURN path || ': ' || val::text || ' is below the minimum ' || (schema->>'minimum');
        END IF;
        IF jsonb_typeof(schema->'maximum') = 'number' AND n > (schema->>'maximum')::numeric THEN
            RETURN path || ': ' || val::text || ' is above the maximum ' || (schema->>'maximum');
        END IF;
        IF jsonb_typeof(schema->'exclusiveMinimum') = 'number' AND n <= (schema->>'exclusiveMinimum')::numeric THEN
            RETURN path || ': ' || val::text || ' must be above ' || (schema->>'exclusiveMinimum');
        END IF;
        IF jsonb_typeof(schema->'exclusiveMaximum') = 'number' AND n >= (schema->>'exclusiveMaximum')::numeric THEN
            RETURN path || ': ' || val::text || ' must be below ' || (schema->>'exclusiveMaximum');
        END IF;
        SELECT r.lo, r.hi INTO lo, hi FROM (VALUES
            ('uint8', 0, 255), ('int8', -128, 127),
            ('uint16', 0, 65535), ('int16', -32768, 32767),
            ('uint32', 0, 4294967295), ('int32', -2147483648, 2147483647),
            ('uint64', 0, 18446744073709551615), ('int64', -9223372036854775808, 9223372036854775807),
            ('uint', 0, 18446744073709551615), ('int', -9223372036854775808, 9223372036854775807),
            ('uint128', 0, 340282366920938463463374607431768211455),
            ('int128', -170141183460469231731687303715884105728, 170141183460469231731687303715884105727)
        ) AS r(format, lo, hi) WHERE r.format = schema->>'format';
        IF FOUND AND n NOT BETWEEN lo AND hi THEN
            RETURN path || ': ' || val::text || ' is out of range for ' || (schema->>'format');
        END IF;
    END IF;

    IF vt = 'string' AND schema->>'format' = 'date-time' AND NOT chainsync.args_is_datetime(val #>> '{}') THEN
        RETURN path || ': expected an RFC 3339 date-time such as "2024-05-01T12:00:00Z", got '
            || chainsync.args_describe(val);
    END IF;

    IF vt = 'object' THEN
        IF schema->'additionalProperties' = 'false'::jsonb THEN
            SELECT k INTO key FROM jsonb_object_keys(val) AS o(k)
            WHERE NOT coalesce(schema->'properties' ? o.k, false)
            ORDER BY o.k LIMIT 1;
            IF key IS NOT NULL THEN
                RETURN chainsync.args_path(path, key) || ': unknown field (accepts: '
                    || coalesce((SELECT string_agg(p, ', ' ORDER BY p)
                                 FROM jsonb_object_keys(schema->'properties') AS t(p)), 'no fields')
                    || ')';
            END IF;
        ELSIF jsonb_typeof(schema->'additionalProperties') = 'object' THEN
            FOR key, item IN SELECT o.key, o.value FROM jsonb_each(val) AS o
                             WHERE NOT coalesce(schema->'properties' ? o.key, false) ORDER BY o.key LOOP
                err := chainsync.args_error_at(schema->'additionalProperties', item,
                                               chainsync.args_path(path, key), root, depth + 1);
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END LOOP;
        END IF;
        IF jsonb_typeof(schema->'properties') = 'object' THEN
            FOR key, sub IN SELECT p.key, p.value FROM jsonb_each(schema->'properties') AS p
                            WHERE val ? p.key ORDER BY p.key LOOP
                err := chainsync.args_error_at(sub, val->key, chainsync.args_path(path, key), root, depth + 1);
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END LOOP;
        END IF;
        IF jsonb_typeof(schema->'required') = 'array' THEN
            SELECT r INTO key FROM jsonb_array_elements_text(schema->'required') AS t(r)
            WHERE NOT val ? t.r LIMIT 1;
            IF key IS NOT NULL THEN
                RETURN chainsync.args_path(path, key) || ': missing field';
            END IF;
        END IF;
    END IF;

    IF vt = 'array' THEN
        len := jsonb_array_length(val);
        IF jsonb_typeof(schema->'minItems') = 'number' AND len < (schema->>'minItems')::numeric THEN
            RETURN path || ': expected at least ' || (schema->>'minItems') || ' items, got ' || len;
        END IF;
        IF jsonb_typeof(schema->'maxItems') = 'number' AND len > (schema->>'maxItems')::numeric THEN
            RETURN path || ': expected at most ' || (schema->>'maxItems') || ' items, got ' || len;
        END IF;
        prefix_len := 0;
        IF jsonb_typeof(schema->'prefixItems') = 'array' THEN
            prefix_len := jsonb_array_length(schema->'prefixItems');
            FOR i IN 0 .. least(prefix_len, len) - 1 LOOP
                err := chainsync.args_error_at(schema->'prefixItems'->i, val->i,
                                               path || '[' || i || ']', root, depth + 1);
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END LOOP;
        END IF;
        IF schema ? 'items' THEN
            FOR i IN prefix_len .. len - 1 LOOP
                err := chainsync.args_error_at(schema->'items', val->i, path || '[' || i || ']', root, depth + 1);
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END LOOP;
        END IF;
    END IF;

    RETURN NULL;
END
$$;

-- Why `args` do not match `schema` (a message naming the field, e.g.
-- `args.n: unknown field (accepts: fail, payload, sleep_ms)`), or NULL when they do.
CREATE FUNCTION chainsync.args_error(schema jsonb, args jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT chainsync.args_error_at(schema, args, 'args', schema, 0)
$$;

CREATE OR REPLACE FUNCTION chainsync.enqueue(
    kind         text,
    args         jsonb DEFAULT '{}',
    queue        text DEFAULT NULL,
    priority     smallint DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    backoff_base_ms bigint DEFAULT NULL,
    backoff_cap_ms  bigint DEFAULT NULL
) RETURNS uuid LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    k  chainsync.kinds%ROWTYPE;
    new_id uuid;
    args_err text;
BEGIN
    SELECT * INTO k FROM chainsync.kinds WHERE kinds.kind = enqueue.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chainsync.enqueue: unknown job kind "%" (known: %)', enqueue.kind,
            (SELECT coalesce(string_agg(kinds.kind, ', ' ORDER BY kinds.kind), 'none; run chainsync migrate') FROM chainsync.kinds)
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.args IS NULL OR jsonb_typeof(enqueue.args) <> 'object' THEN
        RAISE EXCEPTION 'chainsync.enqueue: args must be a JSON object, got %', coalesce(jsonb_typeof(enqueue.args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.priority IS NULL OR enqueue.priority NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'chainsync.enqueue: priority must be between 0 and 100, got %', enqueue.priority
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.max_attempts IS NOT NULL AND enqueue.max_attempts < 1 THEN
        RAISE EXCEPTION 'chainsync.enqueue: max_attempts must be at least 1, got %', enqueue.max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.backoff_base_ms IS NOT NULL AND enqueue.backoff_base_ms < 1
       OR enqueue.backoff_cap_ms IS NOT NULL AND enqueue.backoff_cap_ms < coalesce(enqueue.backoff_base_ms, 1) THEN
        RAISE EXCEPTION 'chainsync.enqueue: backoff_base_ms must be positive and backoff_cap_ms not below it (got %, %)',
            enqueue.backoff_base_ms, enqueue.backoff_cap_ms USING ERRCODE = '22023';
    END IF;
    IF k.args_schema IS NOT NULL THEN
        args_err := chainsync.args_error(k.args_schema, enqueue.args);
        IF args_err IS NOT NULL THEN
            RAISE EXCEPTION 'chainsync.enqueue: invalid args for %: %', enqueue.kind, args_err
                USING ERRCODE = '22023',
                      HINT = format('chainsync.kinds.args_schema of %L describes the accepted args', enqueue.kind);
        END IF;
    END IF;
    -- The holder of the key can start (or finish) between a conflict and the look-up: try again.
    LOOP
        INSERT INTO chainsync.jobs (id, kind, queue, args, priority, max_attempts, run_at, unique_key,
                                    backoff_base_ms, backoff_cap_ms, unique_while_running)
        VALUES (chainsync.uuid_v7(), enqueue.kind, coalesce(enqueue.queue, k.queue), enqueue.args,
                enqueue.priority, coalesce(enqueue.max_attempts, k.max_attempts),
                coalesce(enqueue.run_at, now()), enqueue.unique_key,
                enqueue.backoff_base_ms, enqueue.backoff_cap_ms, k.unique_while_running)
        ON CONFLICT DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        new_id := chainsync.unique_holder(enqueue.unique_key);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END LOOP;
END
$$;

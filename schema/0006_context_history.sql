-- Who did it, and what was it then: the application's context of a change, a record's history,
-- a table as of a moment, and the diff of an update. The CLI, the HTTP API and any SQL client ask
-- the same functions; none of them assembles query text from what a user typed.

-- The context a row carries: a PostgreSQL logical decoding message whose prefix is a context
-- prefix (CDC_AUDIT_CONTEXT_PREFIXES), decoded, or the `/* <prefix> {...} */` comment of a MySQL
-- row event's statement (include.query=true). `actor` is its CDC_AUDIT_ACTOR_FIELD, as text.
ALTER TABLE audit_logging
    ADD COLUMN context jsonb,
    ADD COLUMN actor   text;

-- A PostgreSQL context message belongs to its source transaction (database and txId); changes
-- find theirs through this index, which only context messages enter.
CREATE INDEX audit_logging_context_transaction ON audit_logging
    (source_database, (source_metadata ->> 'txId'))
    WHERE operation_type = 'MESSAGE' AND context IS NOT NULL;

-- Finding transactions by a context field (`cdc-audit transaction --context request_id=r-17`).
CREATE INDEX audit_logging_context ON audit_logging USING gin (context jsonb_path_ops)
    WHERE context IS NOT NULL;

-- One record's changes: row changes by key. A hash index, not a btree: keys arrive in no
-- order, and a btree on jsonb tripled the insert time of the trail where this adds a fraction
-- (BENCHMARKS.md). The same key in another table is filtered out after.
CREATE INDEX audit_logging_key ON audit_logging USING hash (primary_key)
    WHERE operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ');

-- The tables the trail holds: few distinct values, stored once each (btree deduplication), each
-- insert at the end of its table's run. NULL database or schema names index as ''.
CREATE INDEX audit_logging_tables ON audit_logging
    ((coalesce(source_database, '')), (coalesce(source_schema, '')), source_table)
    WHERE operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE');

-- The moments from which a table is known whole: its truncates, and the ends of its snapshots.
CREATE INDEX audit_logging_truncates ON audit_logging (source_table, change_timestamp)
    WHERE operation_type = 'TRUNCATE';
CREATE INDEX audit_logging_snapshot_ends ON audit_logging (source_table, change_timestamp)
    WHERE operation_type = 'READ'
      AND source_metadata ->> 'snapshot' IN ('last', 'last_in_data_collection');
-- Without the mark (older connectors), the last snapshot read before a moment.
CREATE INDEX audit_logging_reads ON audit_logging (source_table, change_timestamp)
    WHERE operation_type = 'READ';

-- Every change with who made it and the context it was made in: its own context (MySQL), else
-- its source transaction's context messages merged in order (a later field wins), else the
-- change-user column. Context never crosses a transaction: the join is on the transaction.
CREATE VIEW audit_trail AS
SELECT a.id, a.source_database, a.source_schema, a.source_table, a.operation_type,
       a.change_timestamp, a.captured_at, a.ingested_at, a.old_data, a.new_data, a.primary_key,
       a.changed_columns, a.unavailable_columns, a.transaction_id, a.lsn,
       coalesce(a.actor, c.actor, a.change_user) AS actor,
       coalesce(a.context, c.context)            AS context,
       a.change_user, a.kafka_topic, a.kafka_partition, a.kafka_offset
FROM audit_logging a
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(e.key, e.value ORDER BY m.kafka_partition, m.kafka_offset) AS context,
           (array_agg(m.actor ORDER BY m.kafka_partition DESC, m.kafka_offset DESC)
                FILTER (WHERE m.actor IS NOT NULL))[1] AS actor
      FROM audit_logging m CROSS JOIN LATERAL jsonb_each(m.context) e
     WHERE a.context IS NULL
       AND a.source_metadata ? 'txId'
       AND m.operation_type = 'MESSAGE' AND m.context IS NOT NULL
       AND m.source_database = a.source_database
       AND m.source_metadata ->> 'txId' = a.source_metadata ->> 'txId'
) c ON true
WHERE NOT (a.operation_type = 'MESSAGE' AND a.context IS NOT NULL);

-- The tables the trail holds row changes of, found by skipping through audit_logging_tables
-- (one index probe a table, not a scan of the trail). `qualified` is db.schema.table, or db.table
-- where the source has no schemas (MySQL, MongoDB).
CREATE FUNCTION audit_tables()
RETURNS TABLE (source_database text, source_schema text, source_table text, qualified text)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE t(d, s, n) AS (
        (SELECT coalesce(a.source_database, ''), coalesce(a.source_schema, ''), a.source_table
           FROM audit_logging a
          WHERE a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE')
          ORDER BY 1, 2, 3 LIMIT 1)
        UNION ALL
        SELECT x.d, x.s, x.n
          FROM t, LATERAL (
            SELECT coalesce(a.source_database, '') AS d, coalesce(a.source_schema, '') AS s,
                   a.source_table AS n
              FROM audit_logging a
             WHERE a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE')
               AND (coalesce(a.source_database, ''), coalesce(a.source_schema, ''), a.source_table)
                   > (t.d, t.s, t.n)
             ORDER BY 1, 2, 3 LIMIT 1) x
    )
    SELECT nullif(d, ''), nullif(s, ''), n, concat_ws('.', nullif(d, ''), nullif(s, ''), n)
      FROM t WHERE n IS NOT NULL
$$;

-- The one table `name` means: its qualified name, an unambiguous suffix of it (public.customers,
-- customers), or its database and table without the schema (inventory.customers). Raises 'unknown table' or 'ambiguous table' (listing the
-- candidates), SQLSTATE 22023.
CREATE FUNCTION audit_resolve_table(name text)
RETURNS TABLE (source_database text, source_schema text, source_table text, qualified text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found text[];
BEGIN
    SELECT array_agg(t.qualified ORDER BY t.qualified) INTO found
      FROM audit_tables() t
     WHERE t.qualified = name OR right(t.qualified, length(name) + 1) = '.' || name
        OR concat_ws('.', t.source_database, t.source_table) = name;
    IF found IS NULL THEN
        RAISE EXCEPTION 'unknown table "%": the trail holds no row changes of a table of that name', name
            USING ERRCODE = '22023',
                  HINT = 'cdc-audit tables lists the tables the trail holds';
    ELSIF array_length(found, 1) > 1 AND NOT name = ANY (found) THEN
        RAISE EXCEPTION 'ambiguous table "%": it could be %', name, array_to_string(found, ', ')
            USING ERRCODE = '22023', HINT = 'give more of the name, e.g. ' || found[1];
    END IF;
    RETURN QUERY SELECT t.* FROM audit_tables() t
     WHERE t.qualified = CASE WHEN name = ANY (found) THEN name ELSE found[1] END;
END
$$;

-- A key as stored: an object as given, or a single key column's bare value (1004, "A-17") named
-- with the table's key column. Raises, SQLSTATE 22023, when the table's key has several columns.
CREATE FUNCTION audit_key(source_database text, source_schema text, source_table text, key jsonb)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    sample  jsonb;
    columns text[];
BEGIN
    IF jsonb_typeof(key) = 'object' THEN
        RETURN key;
    END IF;
    SELECT a.primary_key INTO sample FROM audit_logging a
     WHERE coalesce(a.source_database, '') = coalesce($1, '')
       AND coalesce(a.source_schema, '') = coalesce($2, '')
       AND a.source_table = $3
       AND a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE')
       AND a.primary_key IS NOT NULL
     LIMIT 1;
    IF jsonb_typeof(sample) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'the trail has no keyed changes of %: give the key as a JSON object',
            concat_ws('.', $1, $2, $3) USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(k ORDER BY k) INTO columns FROM jsonb_object_keys(sample) k;
    IF array_length(columns, 1) <> 1 THEN
        RAISE EXCEPTION 'the key of % has the columns %: give the key as a JSON object, e.g. %',
            concat_ws('.', $1, $2, $3), array_to_string(columns, ', '), sample
            USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object(columns[1], key);
END
$$;

-- The columns whose value differs between two images, each with its old and new value. Columns
-- Debezium did not send (unavailable: unchanged TOASTed values) are never a change.
CREATE FUNCTION audit_diff(old jsonb, new jsonb, unavailable text[] DEFAULT '{}')
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, jsonb_build_object('old', old -> k, 'new', new -> k)
                                     ORDER BY k), '{}')
      FROM (SELECT jsonb_object_keys(coalesce(old, '{}')) UNION
            SELECT jsonb_object_keys(coalesce(new, '{}'))) AS keys(k)
     WHERE (old -> k) IS DISTINCT FROM (new -> k)
       AND NOT k = ANY (coalesce(unavailable, '{}'))
$$;

-- Source order of a table's changes: the source's commit time, then its position where that is a
-- number (PostgreSQL LSN, Oracle SCN), then the Kafka offset (a record's changes share a partition).
CREATE FUNCTION audit_source_position(lsn text) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN lsn ~ '^[0-9]{1,30}$' THEN lsn::numeric END
$$;

-- A record's row changes, found through its key (audit_logging_key), in no order. The key is
-- looked up first, on its own: the planner would otherwise walk the whole table by name.
CREATE FUNCTION audit_record_changes(db text, sch text, tbl text, key jsonb)
RETURNS SETOF audit_logging LANGUAGE sql STABLE AS $$
    WITH by_key AS MATERIALIZED (
        SELECT * FROM audit_logging a
         WHERE a.primary_key = key AND a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ'))
    SELECT * FROM by_key b
     WHERE coalesce(b.source_database, '') = coalesce(db, '')
       AND coalesce(b.source_schema, '') = coalesce(sch, '')
       AND b.source_table = tbl
$$;

-- The image of a row change's record just before it in source order (the previous change's
-- after image): what an update without a before image changed from.
CREATE FUNCTION audit_previous_image(a audit_logging) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT p.new_data
      FROM audit_record_changes(a.source_database, a.source_schema, a.source_table, a.primary_key) p
     WHERE (p.change_timestamp, coalesce(audit_source_position(p.lsn), -1), p.kafka_partition, p.kafka_offset)
         < (a.change_timestamp, coalesce(audit_source_position(a.lsn), -1), a.kafka_partition, a.kafka_offset)
     ORDER BY p.change_timestamp DESC, coalesce(audit_source_position(p.lsn), -1) DESC,
              p.kafka_partition DESC, p.kafka_offset DESC
     LIMIT 1
$$;

-- One record's changes in source order, each with who made it, the context, the columns it
-- changed (old and new value; for an update without a before image, against the version
-- before it in the trail) and the columns Debezium did not send.
CREATE FUNCTION audit_history(source_table text, key jsonb)
RETURNS TABLE (id bigint, change_timestamp timestamptz, operation_type text, actor text,
               context jsonb, changes jsonb, unavailable_columns text[], old_data jsonb,
               new_data jsonb, transaction_id text, lsn text, kafka_topic text,
               kafka_partition integer, kafka_offset bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t record;
    k jsonb;
BEGIN
    SELECT * INTO t FROM audit_resolve_table(source_table);
    k := audit_key(t.source_database, t.source_schema, t.source_table, key);
    RETURN QUERY
    SELECT h.id, h.change_timestamp, h.operation_type, tr.actor, tr.context,
           CASE WHEN h.operation_type = 'UPDATE'
                THEN audit_diff(coalesce(h.old_data, h.previous), h.new_data, h.unavailable_columns)
           END,
           h.unavailable_columns, h.old_data, h.new_data, h.transaction_id, h.lsn,
           h.kafka_topic, h.kafka_partition, h.kafka_offset
      FROM (SELECT a.*, lag(a.new_data) OVER w AS previous,
                   row_number() OVER w AS n
              FROM audit_record_changes(t.source_database, t.source_schema, t.source_table, k) a
            WINDOW w AS (ORDER BY a.change_timestamp, audit_source_position(a.lsn),
                                  a.kafka_partition, a.kafka_offset)) h
      JOIN audit_trail tr ON tr.id = h.id
     ORDER BY h.n;
END
$$;

-- Where the trail can rebuild a table from, as of `at`: its last truncate before then (the table
-- was empty), else the end of a snapshot read before then (its record marked `last` or
-- `last_in_data_collection`; without the mark, its last record once streamed changes follow
-- it), else nothing: rows that did not change since the trail began are then missing. `gaps`
-- counts the holes Kafka left in the table's topics (audit_gaps).
CREATE FUNCTION audit_as_of_basis(source_table text, at timestamptz)
RETURNS TABLE (qualified text, reliable_from timestamptz, basis text, gaps bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t record;
    truncated timestamptz;
    snapshot timestamptz;
    last_read timestamptz;
    streamed timestamptz;
BEGIN
    SELECT * INTO t FROM audit_resolve_table(source_table);
    SELECT max(a.change_timestamp) INTO truncated FROM audit_logging a
     WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
       AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
       AND a.source_table = t.source_table
       AND a.operation_type = 'TRUNCATE'
       AND a.change_timestamp <= at;
    SELECT min(a.change_timestamp) INTO snapshot FROM audit_logging a
     WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
       AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
       AND a.source_table = t.source_table
       AND a.operation_type = 'READ'
       AND a.source_metadata ->> 'snapshot' IN ('last', 'last_in_data_collection')
       AND a.change_timestamp <= at;
    IF snapshot IS NULL THEN
        SELECT max(a.change_timestamp) INTO last_read FROM audit_logging a
         WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
           AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
           AND a.source_table = t.source_table
           AND a.operation_type = 'READ'
           AND a.source_metadata ->> 'snapshot' IS DISTINCT FROM 'incremental'
           AND a.change_timestamp <= at;
        IF last_read IS NOT NULL THEN
            -- Streaming follows a snapshot: a change after its last read means it had ended.
            SELECT a.change_timestamp INTO streamed FROM audit_logging a
             WHERE a.source_table = t.source_table
               AND a.change_timestamp > last_read AND a.change_timestamp <= at
               AND coalesce(a.source_database, '') = coalesce(t.source_database, '')
               AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
               AND a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
             ORDER BY a.change_timestamp LIMIT 1;
            IF streamed IS NOT NULL THEN
                snapshot := last_read;
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT t.qualified,
        coalesce(truncated, snapshot),
        CASE WHEN truncated IS NOT NULL THEN 'truncate'
             WHEN snapshot IS NOT NULL THEN 'snapshot'
             ELSE 'none' END,
        (SELECT count(*) FROM audit_gaps g
          WHERE g.kafka_topic IN (
            SELECT a.kafka_topic FROM audit_logging a
             WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
               AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
               AND a.source_table = t.source_table
               AND a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE')
             LIMIT 1));
END
$$;

-- The table's rows as the trail says they were at `at` (with `key`, that one row): per key the
-- last change at or before `at`, unless it was a delete or came before the table's last truncate.
CREATE FUNCTION audit_as_of(source_table text, at timestamptz, key jsonb DEFAULT NULL)
RETURNS TABLE (primary_key jsonb, row_data jsonb, changed_at timestamptz, operation_type text,
               transaction_id text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t record;
    k jsonb;
    truncated record;
BEGIN
    SELECT * INTO t FROM audit_resolve_table(source_table);
    IF key IS NOT NULL THEN
        k := audit_key(t.source_database, t.source_schema, t.source_table, key);
    END IF;
    SELECT a.change_timestamp, audit_source_position(a.lsn) AS position INTO truncated
      FROM audit_logging a
     WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
       AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
       AND a.source_table = t.source_table
       AND a.operation_type = 'TRUNCATE'
       AND a.change_timestamp <= at
     ORDER BY a.change_timestamp DESC, audit_source_position(a.lsn) DESC NULLS LAST
     LIMIT 1;
    RETURN QUERY
    SELECT l.primary_key, l.new_data, l.change_timestamp, l.operation_type, l.transaction_id
      FROM (SELECT DISTINCT ON (a.primary_key) a.*
              FROM (SELECT * FROM audit_record_changes(t.source_database, t.source_schema,
                                                       t.source_table, k)
                     WHERE k IS NOT NULL
                    UNION ALL
                    SELECT * FROM audit_logging r
                     WHERE k IS NULL
                       AND coalesce(r.source_database, '') = coalesce(t.source_database, '')
                       AND coalesce(r.source_schema, '') = coalesce(t.source_schema, '')
                       AND r.source_table = t.source_table
                       AND r.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ')
                       AND r.primary_key IS NOT NULL
                       AND r.change_timestamp <= at) a
             WHERE a.change_timestamp <= at
             ORDER BY a.primary_key, a.change_timestamp DESC,
                      audit_source_position(a.lsn) DESC NULLS LAST,
                      a.kafka_partition DESC, a.kafka_offset DESC) l
     WHERE l.operation_type <> 'DELETE'
       AND (truncated.change_timestamp IS NULL
            OR (l.change_timestamp, coalesce(audit_source_position(l.lsn), 0))
               > (truncated.change_timestamp, coalesce(truncated.position, 0)))
     ORDER BY l.primary_key;
END
$$;

-- Everything one source transaction did, with its context and whether all of it is here. The id
-- is the transaction_id of its rows; a PostgreSQL txId (what a context message carries) also
-- finds the rows Debezium gave the transaction block's id "txId:lsn".
CREATE FUNCTION audit_transaction(transaction text)
RETURNS TABLE (audit_id bigint, source_database text, source_table text, operation_type text,
               change_timestamp timestamptz, primary_key jsonb, actor text, context jsonb,
               changes jsonb, unavailable_columns text[], old_data jsonb, new_data jsonb,
               expected_events bigint, recorded_events bigint, complete boolean)
LANGUAGE sql STABLE AS $$
    SELECT tr.id, tr.source_database, concat_ws('.', tr.source_schema, tr.source_table),
           tr.operation_type, tr.change_timestamp, tr.primary_key, tr.actor, tr.context,
           CASE WHEN tr.operation_type = 'UPDATE'
                THEN audit_diff(coalesce(tr.old_data, audit_previous_image(a)), tr.new_data,
                                tr.unavailable_columns) END,
           tr.unavailable_columns, tr.old_data, tr.new_data,
           s.expected_events, s.recorded_events, s.complete
      FROM audit_trail tr
      JOIN audit_logging a ON a.id = tr.id
      LEFT JOIN audit_transaction_summary s ON s.transaction_id = tr.transaction_id
     WHERE tr.transaction_id = $1
        -- a PostgreSQL txId also names the transaction block's ids, "txId:lsn"
        OR (tr.transaction_id >= $1 || ':' AND tr.transaction_id < $1 || ';')
     ORDER BY tr.change_timestamp, audit_source_position(tr.lsn), tr.kafka_partition, tr.kafka_offset
$$;

-- The source transactions whose context has `field` = `value` (the value as text, or as the JSON
-- it spells: request_id=17 finds 17 and "17"), newest first.
CREATE FUNCTION audit_transactions_by_context(field text, value text)
RETURNS TABLE (source_database text, transaction_id text, change_timestamp timestamptz,
               actor text, context jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    as_json jsonb;
BEGIN
    BEGIN
        as_json := value::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        as_json := to_jsonb(value);
    END;
    RETURN QUERY
    SELECT DISTINCT ON (a.source_database, a.transaction_id)
           a.source_database, a.transaction_id, a.change_timestamp, a.actor, a.context
      FROM audit_logging a
     WHERE a.context IS NOT NULL
       AND (a.context @> jsonb_build_object(field, value)
            OR a.context @> jsonb_build_object(field, as_json))
       AND a.transaction_id IS NOT NULL
     ORDER BY a.source_database, a.transaction_id, a.change_timestamp DESC;
END
$$;

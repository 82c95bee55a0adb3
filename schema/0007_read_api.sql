-- The read API's two questions beyond those of 0006: the changes that match a search, a page at a
-- time, and what the trail holds of each table.

-- Row changes matching every filter given (NULL: any), newest first, at most `max_rows`, those
-- with an id below `before_id` (the cursor of the page before). `key` needs `source_table`.
CREATE FUNCTION audit_changes(source_table text DEFAULT NULL, key jsonb DEFAULT NULL,
                              by_actor text DEFAULT NULL, operation text DEFAULT NULL,
                              from_time timestamptz DEFAULT NULL, to_time timestamptz DEFAULT NULL,
                              transaction text DEFAULT NULL, before_id bigint DEFAULT NULL,
                              max_rows integer DEFAULT 100)
RETURNS TABLE (id bigint, qualified text, operation_type text, change_timestamp timestamptz,
               primary_key jsonb, actor text, context jsonb, changes jsonb,
               unavailable_columns text[], old_data jsonb, new_data jsonb, transaction_id text,
               kafka_topic text, kafka_partition integer, kafka_offset bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    by_table boolean := source_table IS NOT NULL;
    db text;
    sch text;
    tbl text;
    k jsonb;
BEGIN
    IF max_rows NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit % is out of range: 1 to 1000', max_rows USING ERRCODE = '22023';
    END IF;
    IF operation IS NOT NULL
       AND operation NOT IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE', 'MESSAGE', 'DDL') THEN
        RAISE EXCEPTION 'operation "%" is not one of INSERT, UPDATE, DELETE, READ, TRUNCATE, MESSAGE, DDL',
            operation USING ERRCODE = '22023';
    END IF;
    IF by_table THEN
        SELECT r.source_database, r.source_schema, r.source_table INTO db, sch, tbl
          FROM audit_resolve_table(source_table) r;
    END IF;
    IF key IS NOT NULL THEN
        IF NOT by_table THEN
            RAISE EXCEPTION 'a key needs its table' USING ERRCODE = '22023';
        END IF;
        k := audit_key(db, sch, tbl, key);
    END IF;
    RETURN QUERY
    SELECT tr.id, concat_ws('.', tr.source_database, tr.source_schema, tr.source_table),
           tr.operation_type, tr.change_timestamp, tr.primary_key, tr.actor, tr.context,
           CASE WHEN tr.operation_type = 'UPDATE'
                THEN audit_diff(coalesce(tr.old_data, audit_previous_image(a)), tr.new_data,
                                tr.unavailable_columns) END,
           tr.unavailable_columns, tr.old_data, tr.new_data, tr.transaction_id,
           tr.kafka_topic, tr.kafka_partition, tr.kafka_offset
      FROM audit_trail tr
      JOIN audit_logging a ON a.id = tr.id
     WHERE (NOT by_table OR (coalesce(tr.source_database, '') = coalesce(db, '')
                             AND coalesce(tr.source_schema, '') = coalesce(sch, '')
                             AND tr.source_table = tbl))
       AND (k IS NULL OR tr.id IN (SELECT r.id FROM audit_record_changes(db, sch, tbl, k) r))
       AND (by_actor IS NULL OR tr.actor = by_actor)
       AND (operation IS NULL OR tr.operation_type = operation)
       AND (from_time IS NULL OR tr.change_timestamp >= from_time)
       AND (to_time IS NULL OR tr.change_timestamp < to_time)
       AND (transaction IS NULL OR tr.transaction_id = transaction
            OR (tr.transaction_id >= transaction || ':' AND tr.transaction_id < transaction || ';'))
       AND (before_id IS NULL OR tr.id < before_id)
     ORDER BY tr.id DESC
     LIMIT max_rows;
END
$$;

-- What the trail holds of each table: its row changes, and the first and last of them.
CREATE FUNCTION audit_table_summary()
RETURNS TABLE (qualified text, changes bigint, first_change timestamptz, last_change timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.qualified,
           (SELECT count(*) FROM audit_logging a
             WHERE coalesce(a.source_database, '') = coalesce(t.source_database, '')
               AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
               AND a.source_table = t.source_table
               AND a.operation_type IN ('INSERT', 'UPDATE', 'DELETE', 'READ', 'TRUNCATE')),
           (SELECT a.change_timestamp FROM audit_logging a
             WHERE a.source_table = t.source_table
               AND coalesce(a.source_database, '') = coalesce(t.source_database, '')
               AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
               AND a.change_timestamp IS NOT NULL
             ORDER BY a.change_timestamp LIMIT 1),
           (SELECT a.change_timestamp FROM audit_logging a
             WHERE a.source_table = t.source_table
               AND coalesce(a.source_database, '') = coalesce(t.source_database, '')
               AND coalesce(a.source_schema, '') = coalesce(t.source_schema, '')
               AND a.change_timestamp IS NOT NULL
             ORDER BY a.change_timestamp DESC LIMIT 1)
      FROM audit_tables() t
     ORDER BY t.qualified
$$;

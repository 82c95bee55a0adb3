-- Names and identifiers compare byte by byte (COLLATE "C"), not by the database's linguistic
-- collation. Three indexes have them as keys (the Kafka coordinates, a table's history, a
-- transaction's changes) and compare them on every insert; under a linguistic collation each
-- comparison of two different strings goes through the collation library. Inserting 300 000
-- audit rows took 2 to 3% less time with a C.UTF-8 database and 4 to 6% less with an ICU en-US
-- one (BENCHMARKS.md).
--
-- Every column of the same kind changes together (all topics, consumer groups, database,
-- schema and table names, transaction ids), so comparing one with another never mixes two
-- collations. They sort in byte order from now on, which is the order of the names' code points.
--
-- No table is rewritten, but the indexes on these columns are rebuilt, under an exclusive lock:
-- on a large trail this migration takes a while, and the service waits for it.
--
-- The view comparing transaction ids depends on them, so it is recreated with the same
-- definition; whatever was granted on it is granted again.
DO $$
DECLARE
    view_acl aclitem[];
    g record;
BEGIN
    SELECT relacl INTO view_acl FROM pg_class WHERE oid = 'audit_transaction_summary'::regclass;
    DROP VIEW audit_transaction_summary;

    ALTER TABLE audit_logging
        ALTER COLUMN source_database TYPE text COLLATE "C",
        ALTER COLUMN source_schema TYPE text COLLATE "C",
        ALTER COLUMN source_table TYPE text COLLATE "C",
        ALTER COLUMN transaction_id TYPE text COLLATE "C",
        ALTER COLUMN kafka_topic TYPE text COLLATE "C";
    ALTER TABLE audit_transactions
        ALTER COLUMN transaction_id TYPE text COLLATE "C",
        ALTER COLUMN kafka_topic TYPE text COLLATE "C";
    ALTER TABLE audit_rejections
        ALTER COLUMN kafka_topic TYPE text COLLATE "C";
    ALTER TABLE audit_positions
        ALTER COLUMN consumer_group TYPE text COLLATE "C",
        ALTER COLUMN topic TYPE text COLLATE "C";
    ALTER TABLE audit_gaps
        ALTER COLUMN consumer_group TYPE text COLLATE "C",
        ALTER COLUMN kafka_topic TYPE text COLLATE "C";

    -- "Everything transaction X did, and is it all here?" (as in 0001)
    CREATE VIEW audit_transaction_summary AS
    SELECT t.transaction_id,
           min(t.event_time) FILTER (WHERE t.status = 'BEGIN') AS began_at,
           max(t.event_time) FILTER (WHERE t.status = 'END')   AS ended_at,
           max(t.event_count) FILTER (WHERE t.status = 'END')  AS expected_events,
           (SELECT count(*) FROM audit_logging a WHERE a.transaction_id = t.transaction_id) AS recorded_events,
           coalesce(max(t.event_count) FILTER (WHERE t.status = 'END')
                    = (SELECT count(*) FROM audit_logging a WHERE a.transaction_id = t.transaction_id), false) AS complete
    FROM audit_transactions t
    GROUP BY t.transaction_id;

    FOR g IN
        SELECT a.grantee, a.privilege_type, a.is_grantable
        FROM aclexplode(view_acl) AS a  -- none when nothing was granted (NULL)
        WHERE a.grantee <> (SELECT relowner FROM pg_class WHERE oid = 'audit_transaction_summary'::regclass)
    LOOP
        EXECUTE format(
            'GRANT %s ON audit_transaction_summary TO %s%s',
            g.privilege_type,
            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
        );
    END LOOP;
END
$$;

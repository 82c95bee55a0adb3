-- Retention: a month of audit_logging past CDC_AUDIT_RETENTION is archived to a file (its rows
-- with their links, enough to verify them on their own: src/integrity/archive.rs), recorded here
-- and as an 'archived' amendment of each chain it held, then dropped. Only that path drops a
-- partition: audit_drop_archived_partition() refuses one that has no archive, and runs as the
-- table's owner so that the service's role needs no more.
CREATE TABLE audit_archives (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition_name text        NOT NULL UNIQUE,
    range_from     timestamptz,            -- NULL: from the beginning
    range_to       timestamptz NOT NULL,
    rows           bigint      NOT NULL,
    file           text        NOT NULL,
    sha256         text        NOT NULL,   -- of the file, hex
    actor          text        NOT NULL DEFAULT session_user,
    archived_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER audit_archives_append_only
    BEFORE UPDATE OR DELETE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();
CREATE TRIGGER audit_archives_no_truncate
    BEFORE TRUNCATE ON audit_archives
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

-- The partitions of audit_logging and the months they hold (NULL: unbounded; the default
-- partition has neither).
CREATE FUNCTION audit_partitions()
RETURNS TABLE (name text, range_from timestamptz, range_to timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'audit_logging'::regclass
$$;

CREATE FUNCTION audit_drop_archived_partition(partition text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_partitions() p
                    WHERE p.name = partition AND p.range_to IS NOT NULL) THEN
        RAISE EXCEPTION '% is not a month of audit_logging', partition USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_archives a WHERE a.partition_name = partition) THEN
        RAISE EXCEPTION '% has no archive: only an archived month of the trail is dropped', partition
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE format('DROP TABLE %I', partition);
END
$$;
REVOKE EXECUTE ON FUNCTION audit_drop_archived_partition(text) FROM PUBLIC;

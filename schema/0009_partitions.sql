-- The trail partitioned by time: audit_logging becomes a table partitioned by month of
-- ingested_at, so that old months can be archived and dropped whole (retention) and each
-- month's indexes stay the size of a month. The rows already there become its first partition,
-- audit_logging_initial (everything up to the end of this month), without being copied; new
-- months go into audit_logging_YYYY_MM, made ahead by audit_ensure_partitions() (the service
-- calls it, CDC_AUDIT_PARTITIONS_AHEAD); anything outside every month lands in
-- audit_logging_default rather than being refused.
--
-- What this costs on an existing trail: the table is locked while the first partition's primary
-- key and coordinates index are rebuilt with ingested_at in them (a few seconds a million rows,
-- docs/operations.md); the service's writers wait and carry on. Every other index is kept.
--
-- Two guarantees change form. A unique index of a partitioned table must hold the partition
-- key, so the Kafka coordinates are unique per month of ingestion, not across months: the fence
-- (one stored position per partition, moved in the writing transaction) is what keeps an offset
-- from being written twice, and the hash chain is what shows it if one were anyway (a link
-- number twice: `verify` reports it as inserted), which no constraint could when a superuser can
-- drop constraints. The append-only triggers are on the partitioned table, so on every
-- partition; TRUNCATE is refused on each partition too.
DO $migration$
DECLARE
    boundary timestamptz :=
        (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    saved_views   text[] := '{}';
    saved_functions text[] := '{}';
    saved_indexes text[] := '{}';
    table_acl     aclitem[];
    def           text;
    r             record;
    g             record;
BEGIN
    -- What depends on the table or its row type is dropped and made again from its own
    -- definition, with the same grants.
    FOR r IN SELECT c.relname, pg_get_viewdef(c.oid, true) AS def, c.relacl
               FROM pg_class c
              WHERE c.relname IN ('audit_trail', 'audit_transaction_summary')
                AND c.relnamespace = 'public'::regnamespace
    LOOP
        saved_views := saved_views || format('CREATE VIEW %I AS %s', r.relname, r.def);
        FOR g IN SELECT * FROM aclexplode(r.relacl) LOOP
            saved_views := saved_views || format('GRANT %s ON %I TO %s%s', g.privilege_type,
                r.relname, CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE format('DROP VIEW %I', r.relname);
    END LOOP;
    FOR r IN SELECT p.oid, pg_get_functiondef(p.oid) AS def, p.proacl, p.oid::regprocedure AS sig
               FROM pg_proc p
              WHERE p.proname IN ('audit_record_changes', 'audit_previous_image')
                AND p.pronamespace = 'public'::regnamespace
    LOOP
        saved_functions := saved_functions || r.def;
        FOR g IN SELECT * FROM aclexplode(r.proacl) WHERE g.grantee <> 0 LOOP
            saved_functions := saved_functions || format('GRANT EXECUTE ON FUNCTION %s TO %s%s',
                r.sig, g.grantee::regrole::text,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE format('DROP FUNCTION %s', r.sig);
    END LOOP;

    -- The table becomes the first partition; its indexes keep their definitions under new names
    -- and are attached to the partitioned table's, not built again.
    SELECT relacl INTO table_acl FROM pg_class WHERE oid = 'audit_logging'::regclass;
    FOR r IN SELECT i.indexname, i.indexdef FROM pg_indexes i
              WHERE i.tablename = 'audit_logging' AND i.schemaname = 'public'
                AND i.indexname NOT IN ('audit_logging_pkey', 'audit_logging_kafka_coordinates')
    LOOP
        saved_indexes := saved_indexes || r.indexdef;
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.indexname, r.indexname || '_initial');
    END LOOP;
    ALTER TABLE audit_logging RENAME TO audit_logging_initial;
    ALTER TABLE audit_logging_initial
        DROP CONSTRAINT audit_logging_pkey,
        DROP CONSTRAINT audit_logging_kafka_coordinates,
        ALTER COLUMN id DROP IDENTITY;
    DROP TRIGGER audit_logging_append_only ON audit_logging_initial;

    CREATE TABLE audit_logging (LIKE audit_logging_initial
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS)
        PARTITION BY RANGE (ingested_at);
    ALTER TABLE audit_logging ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
    PERFORM setval(pg_get_serial_sequence('audit_logging', 'id'),
                   coalesce((SELECT max(id) FROM audit_logging_initial), 0) + 1, false);
    ALTER TABLE audit_logging
        ADD CONSTRAINT audit_logging_pkey PRIMARY KEY (id, ingested_at),
        ADD CONSTRAINT audit_logging_kafka_coordinates
            UNIQUE (kafka_topic, kafka_partition, kafka_offset, ingested_at);
    FOREACH def IN ARRAY saved_indexes LOOP
        EXECUTE def;
    END LOOP;
    -- Ingestion time follows insertion order: a block range index is enough to find a month's
    -- or a day's rows, at a fraction of a btree's cost.
    CREATE INDEX audit_logging_ingested ON audit_logging USING brin (ingested_at);
    CREATE TRIGGER audit_logging_append_only
        BEFORE UPDATE OR DELETE ON audit_logging
        FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();
    EXECUTE format('ALTER TABLE audit_logging ATTACH PARTITION audit_logging_initial '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', boundary);
    CREATE TABLE audit_logging_default PARTITION OF audit_logging DEFAULT;
    CREATE TRIGGER audit_logging_no_truncate
        BEFORE TRUNCATE ON audit_logging_default
        FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();
    FOR g IN SELECT * FROM aclexplode(table_acl) WHERE grantee <> 0 LOOP
        EXECUTE format('GRANT %s ON audit_logging TO %s%s', g.privilege_type,
            g.grantee::regrole::text, CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;

    -- One function calls the other: their bodies are checked when they are called.
    PERFORM set_config('check_function_bodies', 'off', true);
    FOREACH def IN ARRAY saved_functions LOOP
        EXECUTE def;
    END LOOP;
    FOREACH def IN ARRAY saved_views LOOP
        EXECUTE def;
    END LOOP;
END
$migration$;

-- A statement trigger of a partitioned table does not fire for a partition truncated by name.
CREATE TRIGGER audit_logging_no_truncate
    BEFORE TRUNCATE ON audit_logging
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

-- Makes the partitions of this month and the next `months_ahead` (UTC) that do not exist yet;
-- returns how many it made. Runs as the table's owner (SECURITY DEFINER), so the service's role
-- may call it without owning the table. A month already covered (by audit_logging_initial) is
-- skipped; a month whose rows sit in audit_logging_default is skipped with a warning (move them
-- out, then call again); a lock not had within two seconds leaves the month for the next call.
CREATE FUNCTION audit_ensure_partitions(months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    made  integer := 0;
    first timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    month timestamp;
    name  text;
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'months_ahead must be 0 to 120, not %', months_ahead
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cdc_audit partitions'));
    FOR i IN 0 .. months_ahead LOOP
        month := first + make_interval(months => i);
        name := 'audit_logging_' || to_char(month, 'YYYY_MM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF audit_logging FOR VALUES FROM (%L) TO (%L)',
                           name, month AT TIME ZONE 'UTC',
                           (month + interval '1 month') AT TIME ZONE 'UTC');
            EXECUTE format('CREATE TRIGGER audit_logging_no_truncate BEFORE TRUNCATE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change()', name);
            made := made + 1;
        EXCEPTION
            WHEN invalid_object_definition THEN
                NULL;  -- overlaps audit_logging_initial: that month is covered
            WHEN check_violation THEN
                RAISE WARNING 'audit_logging_default holds rows of %: move them out, then call audit_ensure_partitions again', name;
            WHEN lock_not_available THEN
                RAISE WARNING 'audit_logging is busy: % is left for the next call', name;
        END;
    END LOOP;
    RETURN made;
END
$$;
REVOKE EXECUTE ON FUNCTION audit_ensure_partitions(integer) FROM PUBLIC;

SELECT audit_ensure_partitions(3);

-- Offsets the service never received: Kafka no longer held them when it read past them
-- (retention, compaction) or did not deliver them (aborted transactions). A single missing
-- offset is a transaction's commit marker and is not recorded. Each hole is inserted in the
-- transaction of the batch that reads past it, so it is recorded exactly once, like the rows
-- around it. Append-only, like the trail.
CREATE TABLE audit_gaps (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group   text        NOT NULL,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    first_offset     bigint      NOT NULL,
    end_offset       bigint      NOT NULL,  -- exclusive
    detected_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_gaps_range CHECK (end_offset > first_offset),
    CONSTRAINT audit_gaps_once UNIQUE (consumer_group, kafka_topic, kafka_partition, first_offset)
);

-- The refusal names the table it guards, now that it guards two.
CREATE OR REPLACE FUNCTION cdc_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_gaps_append_only
    BEFORE UPDATE OR DELETE ON audit_gaps
    FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();

CREATE TRIGGER audit_gaps_no_truncate
    BEFORE TRUNCATE ON audit_gaps
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

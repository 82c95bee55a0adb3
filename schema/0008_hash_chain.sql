-- A trail you can prove: every row of the trail is a link of its partition's hash chain (see
-- src/chain.rs for what a link hashes). The service computes the links in the batch's
-- transaction, from the bytes it sends, which are the bytes binary COPY returns (jsonb in its
-- printed form); `cdc-audit verify` recomputes them from the stored rows alone. Rows written
-- before this migration have no link: the chain of a partition starts at its next batch.
-- Adding nullable columns without a default rewrites nothing: instant on any size of trail.
ALTER TABLE audit_logging
    ADD COLUMN chain_seq  bigint,
    ADD COLUMN chain_hash bytea;
ALTER TABLE audit_transactions
    ADD COLUMN chain_seq  bigint,
    ADD COLUMN chain_hash bytea;
ALTER TABLE audit_rejections
    ADD COLUMN chain_seq  bigint,
    ADD COLUMN chain_hash bytea;
ALTER TABLE audit_gaps
    ADD COLUMN chain_seq  bigint,
    ADD COLUMN chain_hash bytea;

-- The head of each chain, moved in the same transaction as the position: the number of the
-- last link and the link itself (NULL: no link yet).
ALTER TABLE audit_positions
    ADD COLUMN chain_seq  bigint NOT NULL DEFAULT 0,
    ADD COLUMN chain_head bytea;

-- What changed a link's row after it was written, itself a link of the same chain: a rejection
-- replayed into an audit row (or found to be nothing to store) or purged, a row erased.
-- `was_entry` is the entry the amended link was made with, so the chain still verifies;
-- `now_entry` the entry of the row that stands there now (NULL: none). An 'archived' amendment
-- (0010) says the links up to `target_seq` were archived and dropped; its `was_entry` is the
-- link at `target_seq`, where the chain in the database continues. `target_seq` is NULL for
-- a row written before the chain began (erased: `target_id` says which). The erasure log is
-- this table's 'erased' rows: who (`actor`), when, why (`reason`), which row.
CREATE TABLE audit_amendments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  text        NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    target_seq      bigint,
    target_id       bigint,
    action          text        NOT NULL CHECK (action IN ('replayed', 'purged', 'erased', 'archived')),
    was_entry       bytea       NOT NULL,
    now_entry       bytea,
    actor           text        NOT NULL,
    reason          text,
    amended_at      timestamptz NOT NULL,
    chain_seq       bigint      NOT NULL,
    chain_hash      bytea       NOT NULL,
    CONSTRAINT audit_amendments_link UNIQUE (consumer_group, kafka_topic, kafka_partition, chain_seq)
);

CREATE TRIGGER audit_amendments_append_only
    BEFORE UPDATE OR DELETE ON audit_amendments
    FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();
CREATE TRIGGER audit_amendments_no_truncate
    BEFORE TRUNCATE ON audit_amendments
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

-- Transaction events are trail too.
CREATE TRIGGER audit_transactions_append_only
    BEFORE UPDATE OR DELETE ON audit_transactions
    FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();
CREATE TRIGGER audit_transactions_no_truncate
    BEFORE TRUNCATE ON audit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

-- Erasure (`cdc-audit erase`) is the one change an audit row may undergo: a data subject's
-- values replaced by a marker in the images, key, change detail and context, as the table's
-- owner, in a transaction that says so (`SET LOCAL cdc_audit.erasing = 'on'`) and records each
-- row it changes as an amendment of its chain. Every other column stays as it was written.
CREATE OR REPLACE FUNCTION cdc_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- The trail's table, also when the row is in one of its partitions (0009).
    relation text := coalesce(pg_partition_root(TG_RELID)::text, TG_TABLE_NAME);
BEGIN
    IF TG_OP = 'UPDATE' AND relation = 'audit_logging'
       AND current_setting('cdc_audit.erasing', true) = 'on'
       AND to_jsonb(NEW) - '{old_data,new_data,primary_key,change_detail,context}'::text[]
           = to_jsonb(OLD) - '{old_data,new_data,primary_key,change_detail,context}'::text[] THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', relation, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

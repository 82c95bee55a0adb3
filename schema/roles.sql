-- Least privilege, run once by a database owner (not a migration: creating roles needs rights
-- the service should not have). Migrations run as the owner (`cdc-audit migrate`); the service
-- runs as cdc_audit_service with CDC_AUDIT_MIGRATE=false.
CREATE ROLE cdc_audit_service LOGIN;   -- then: ALTER ROLE cdc_audit_service PASSWORD '...';
GRANT USAGE ON SCHEMA public TO cdc_audit_service;
-- Append only: no UPDATE or DELETE on the trail.
GRANT SELECT, INSERT ON audit_logging, audit_transactions, audit_gaps, audit_amendments
    TO cdc_audit_service;
-- DELETE for `cdc-audit rejections replay` and `purge`.
GRANT SELECT, INSERT, DELETE ON audit_rejections TO cdc_audit_service;
-- Positions move forward with every batch.
GRANT SELECT, INSERT, UPDATE ON audit_positions TO cdc_audit_service;
GRANT SELECT ON cdc_audit_migrations, audit_transaction_summary TO cdc_audit_service;

-- Reading the trail, and nothing else: `cdc-audit history`, `as-of`, `transaction`, `tables`,
-- the audit_trail view and the audit_* functions (SECURITY INVOKER: they read as the reader).
-- No rejections (they keep raw messages, unmasked); of the positions, only the chain heads.
CREATE ROLE cdc_audit_reader LOGIN;    -- then: ALTER ROLE cdc_audit_reader PASSWORD '...';
GRANT USAGE ON SCHEMA public TO cdc_audit_reader;
GRANT SELECT ON audit_logging, audit_transactions, audit_gaps, audit_amendments,
    audit_transaction_summary, audit_trail TO cdc_audit_reader;
-- The chains' heads, for signed digests (`GET /api/v1/digest`); positions are no secret.
GRANT SELECT (consumer_group, topic, partition, chain_seq, chain_head) ON audit_positions
    TO cdc_audit_reader;
-- The service makes next months' partitions of audit_logging (CDC_AUDIT_PARTITIONS_AHEAD); the
-- function runs as the table's owner.
GRANT EXECUTE ON FUNCTION audit_ensure_partitions(integer) TO cdc_audit_service;
-- Retention (CDC_AUDIT_RETENTION): archives are recorded, archived months dropped by the owner's
-- function.
GRANT SELECT, INSERT ON audit_archives TO cdc_audit_service;
GRANT EXECUTE ON FUNCTION audit_drop_archived_partition(text) TO cdc_audit_service;

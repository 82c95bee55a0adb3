-- The audit trail is append-only: UPDATE, DELETE and TRUNCATE of audit_logging are refused,
-- whoever asks. (The service's role has no such grant anyway: see roles.sql.) An owner who must
-- prune old rows does so deliberately:
--   ALTER TABLE audit_logging DISABLE TRIGGER audit_logging_append_only; ... ; ENABLE TRIGGER ...
CREATE FUNCTION cdc_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logging is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_logging_append_only
    BEFORE UPDATE OR DELETE ON audit_logging
    FOR EACH ROW EXECUTE FUNCTION cdc_audit_refuse_change();

CREATE TRIGGER audit_logging_no_truncate
    BEFORE TRUNCATE ON audit_logging
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_audit_refuse_change();

-- A hole the service could not explain. Before it records a hole at or past the partition's first
-- offset, the service fetches it again: records found are written after all; records found only
-- when reading uncommitted ones are an aborted transaction's, and a compacted topic leaves holes
-- by design ('not_delivered'). What is left, nothing there and no reason why, is 'suspect': Kafka
-- never does this, a broker that skips records does, and their changes are not in the trail.
ALTER TABLE audit_gaps DROP CONSTRAINT audit_gaps_cause_check;
ALTER TABLE audit_gaps
    ADD CONSTRAINT audit_gaps_cause_check
    CHECK (cause IN ('retention', 'not_delivered', 'suspect'));

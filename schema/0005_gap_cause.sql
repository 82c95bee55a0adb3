-- Why Kafka did not deliver a recorded hole. When the service reads past a hole of more than one
-- offset, it asks the broker where the partition's log starts: what lies below that, retention
-- deleted before it was read ('retention'); what Kafka still holds but did not deliver is an
-- aborted transaction's records and marker, or records compaction removed ('not_delivered').
-- NULL: not known (the broker did not answer, the partition started from Kafka's committed
-- offset, or the hole was recorded before this column existed).
ALTER TABLE audit_gaps
    ADD COLUMN cause text CHECK (cause IN ('retention', 'not_delivered'));

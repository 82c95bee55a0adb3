-- The audit trail, its rejections, and the consumer positions committed with them.
-- Column names of audit_logging follow the system cdc-audit replaces, so existing queries keep working.

CREATE TABLE audit_logging (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_database   text,
    source_schema     text,
    -- NULL only for schema changes that name no table
    source_table      text,
    -- INSERT, UPDATE, DELETE, READ (snapshot), TRUNCATE, MESSAGE, DDL (schema change)
    operation_type    text        NOT NULL,
    -- when the change was committed in the source database
    change_timestamp  timestamptz,
    -- when Debezium captured it
    captured_at       timestamptz,
    -- when cdc-audit committed it here
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    old_data          jsonb,
    new_data          jsonb,
    primary_key       jsonb,
    -- columns whose value changed (updates); NULL when unknown, e.g. no before image
    changed_columns   text[],
    -- columns Debezium could not send (unchanged TOASTed values); left out of the images
    unavailable_columns text[],
    change_user       text,
    transaction_id    text,
    -- order of the event in its transaction, overall and within its table (transaction metadata)
    transaction_order bigint,
    transaction_collection_order bigint,
    -- source position: PostgreSQL LSN, MySQL binlog file:pos, SQL Server commit LSN, Oracle SCN, MongoDB ord
    lsn               text,
    connector         text,
    is_snapshot       boolean,
    source_metadata   jsonb,
    -- what is not a row image: MongoDB updateDescription/patch/filter, a schema change's DDL
    change_detail     jsonb,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    kafka_timestamp   timestamptz,
    CONSTRAINT audit_logging_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE INDEX audit_logging_table_time ON audit_logging (source_table, change_timestamp);
CREATE INDEX audit_logging_transaction ON audit_logging (transaction_id) WHERE transaction_id IS NOT NULL;

-- BEGIN and END events of Debezium's transaction metadata topic (<prefix>.transaction).
CREATE TABLE audit_transactions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id   text        NOT NULL,
    status           text        NOT NULL,
    -- END: how many change events the transaction produced, and per table
    event_count      bigint,
    data_collections jsonb,
    event_time       timestamptz,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_transactions_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE INDEX audit_transactions_id ON audit_transactions (transaction_id);

-- "Everything transaction X did, and is it all here?"
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

-- Messages that could not become audit rows, kept whole with the reason.
CREATE TABLE audit_rejections (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    kafka_timestamp  timestamptz,
    kafka_key        bytea,
    kafka_value      bytea,
    kafka_headers    jsonb,
    reason           text        NOT NULL,
    error            text        NOT NULL,
    rejected_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_rejections_kafka_coordinates UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

-- The next offset to write per consumer group and partition, committed in the same
-- transaction as the rows it covers. It only moves forward.
CREATE TABLE audit_positions (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

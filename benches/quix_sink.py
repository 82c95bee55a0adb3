"""Quix Streams' PostgreSQLSink on the bench's backlog: the peer `end_to_end --quix` runs
side by side with cdc-audit, on the same broker, topics and consumer settings.

Each change event becomes a flat audit row (operation, table, LSN, transaction id, source
time, the before and after images as JSON text) through an `apply`, and the sink inserts
the rows of each commit interval. Quix Streams writes at least once, into columns it
creates as it sees them; cdc-audit's row is richer (jsonb images, changed columns,
coordinates, context, a hash chain) and written exactly once.

    pip install 'quixstreams[postgresql]'
    python3 benches/quix_sink.py --bootstrap HOST:PORT --topics a,b,c --group G \
        --host 127.0.0.1 --port 5432 --dbname DB --user postgres [--fetch-wait-ms 10]

It runs until it is killed; the bench counts the rows it has written.
"""

import argparse
import json

from quixstreams import Application
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def to_audit(event):
    payload = event.get("payload", event) if isinstance(event, dict) else None
    if not isinstance(payload, dict) or "op" not in payload:
        return None
    source = payload.get("source") or {}
    return {
        "operation": payload["op"],
        "source_table": source.get("table"),
        "lsn": source.get("lsn"),
        "transaction_id": source.get("txId"),
        "change_ms": source.get("ts_ms"),
        "old_data": json.dumps(payload.get("before")),
        "new_data": json.dumps(payload.get("after")),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--password", default="")
    parser.add_argument("--table", default="quix_audit")
    parser.add_argument("--fetch-wait-ms", type=int, default=10)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        # The sink inserts a commit interval's rows (5 s of them) between two polls: more
        # than the 6 s cdc-audit's bench allows, so a minute here.
        consumer_extra_config={
            "fetch.wait.max.ms": args.fetch_wait_ms,
            "max.poll.interval.ms": 60000,
            "session.timeout.ms": 6000,
        },
        auto_create_topics=False,
    )
    sink = PostgreSQLSink(
        host=args.host,
        port=args.port,
        dbname=args.dbname,
        user=args.user,
        password=args.password,
        table_name=args.table,
    )
    for name in args.topics.split(","):
        sdf = app.dataframe(app.topic(name, value_deserializer="json"))
        sdf = sdf.filter(lambda value: value is not None)
        sdf = sdf.apply(to_audit).filter(lambda row: row is not None)
        sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main()

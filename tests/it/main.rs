//! The integration tests: one binary, real PostgreSQL, real Kafka protocol (librdkafka's mock
//! cluster, and tansu where a broker must run in its own process), each test in its own database
//! and broker so they run in parallel.

mod api;
mod avro;
mod browser;
mod chain;
mod chaos;
mod cli;
mod crash;
mod exactly_once;
mod faults;
mod fixtures;
mod history;
mod layout;
mod ops;
mod partitions;
mod pipeline;
mod properties;
mod protobuf;
mod protobuf_writer;
mod proxy;
mod rejections;
mod retention;
mod security;
mod tansu;
mod util;

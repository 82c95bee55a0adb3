//! cdc-audit: Debezium change events from Kafka into an exactly-once PostgreSQL audit trail.
//! See ARCHITECTURE.md for the map of stages and their invariants.

pub mod config;
pub mod demo;
pub mod events;
pub mod http;
pub mod migrate;
pub mod pgcopy;
pub mod pipeline;
pub mod rejections;
pub mod service;
pub mod sink;
pub mod source;
pub mod systemd;
pub mod transform;

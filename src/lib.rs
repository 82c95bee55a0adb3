//! cdc-audit: Debezium change events from Kafka into an exactly-once PostgreSQL audit trail.
//! See ARCHITECTURE.md for the map of stages, the order their imports follow, and their invariants.

// The shared vocabulary, settings and telemetry: leaves.
pub mod chain;
pub mod config;
pub mod events;
pub mod pgcopy;
pub mod registry;
pub mod tracker;
pub mod types;

// The stages, in the order a message passes them, and their wiring.
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod suspicious;
pub mod transform;

// What runs and watches them, and the tools beside them.
pub mod api;
pub mod demo;
pub mod http;
pub mod integrity;
pub mod logging;
pub mod migrate;
pub mod query;
pub mod rejections;
pub mod service;
pub mod systemd;

//! The writer pool's side of the pipeline, and everything that writes the trail: connecting,
//! what a database error means, the fenced batch transaction, and the writer threads.
//! Files here import each other directly, never through this module's re-exports, which are for
//! the rest of the crate.

mod connect;
mod error;
mod fence;
mod stored;
mod writer;

pub use connect::{
    connect, connect_with_settings, pool, reader_pool, tls, write_through, Pool, FLUSH_AFTER,
};
pub use error::{classify, with_causes, ErrorClass, SinkError};
pub use fence::{
    copy_rows, lock_position, now_micros, store_position, stored_positions, write_after,
    write_batch, Head, Target, Written, AUDIT, GAPS, REJECTIONS, TRANSACTIONS,
};
pub use stored::{
    amend, chain_group, copy_out, field, stored, stored_by_id, Action, Amendment, ById, Stored,
    Tuples, AMENDMENTS,
};
pub use writer::{Queue, Writer};

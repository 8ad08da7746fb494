//! # quorate-spanner
//!
//! quorate for Google Cloud Spanner over gcloud-spanner. The crate
//! re-exports the whole of `quorate`: it is the one dependency an
//! application adds.
//!
//! | policy | Spanner |
//! |---|---|
//! | `Strong` | a single-use read with `TimestampBound::strong_read()` |
//! | `Session` | `min_read_timestamp(session's commit timestamp)` |
//! | `BoundedStaleness(d)` | `max_staleness(d)` (at most the one-hour version retention) |
//!
//! Every read reports the read timestamp Spanner chose (`Freshness.point`);
//! the session token carries commit timestamps. Writes run in a read-write
//! transaction that checks the record's version and records the
//! idempotency row in the same commit.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod directed;
mod query;
pub mod settings;
pub mod sql;

pub use backend::{SpannerBackend, SpannerConfig, VERSION_RETENTION};
pub use gcloud_spanner;
pub use query::{SelectRecords, SpannerQuery, SqlRead};
pub use quorate::*;
pub use settings::SpannerSettings;
pub use sql::NativeTable;

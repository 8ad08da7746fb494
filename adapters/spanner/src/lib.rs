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
//!
//! ## Regions
//!
//! A Spanner database lives in one instance, whose instance configuration
//! places its replicas. quorate's regions are the locations of the
//! replicas that serve reads (read-write and read-only replicas; witnesses
//! serve none), named as Spanner names them: `gcloud spanner
//! instance-configs describe nam3` lists them (`replicas[].location` and
//! `type`). For `nam3` — read-write replicas in `us-east4` (the default
//! leader) and `us-east1`, a witness in `us-central1` — the regions are
//! `us-east4` and `us-east1`. `local` is the region this process runs in:
//! bounded and session reads go to its replicas through directed reads.
//!
//! ```no_run
//! use quorate_spanner::{Client, ClientConfig, Credentials, SpannerBackend, SpannerConfig};
//! use quorate_spanner::{Precondition, ReadPolicy, WriteOptions};
//!
//! # async fn demo() -> Result<(), quorate_spanner::Error> {
//! let mut config = SpannerConfig::new(
//!     "projects/acme/instances/orders/databases/orders",
//!     &["us-east4", "us-east1"],
//!     "us-east1",
//! )?;
//! // Application Default Credentials unless told otherwise; the same
//! // credentials serve reads, writes and create_tables.
//! config.credentials = Credentials::File("/etc/orders/spanner-key.json".into());
//! let backend = SpannerBackend::connect(config).await?;
//! backend.create_tables().await?; // once, at deployment
//! let client = Client::new(backend, ClientConfig::default())?;
//! let session = client.session();
//! let placed = client
//!     .write(&session, "order/1", "placed".into(), Precondition::IfAbsent, &WriteOptions::default())
//!     .await?;
//! let read = client.read(&session, "order/1", ReadPolicy::Session).await?;
//! assert_eq!(read.version(), Some(placed.version));
//! # Ok(()) }
//! ```
//!
//! Against the emulator set `SPANNER_EMULATOR_HOST` (or
//! `SpannerConfig::emulator_host`) and `serialize_read_write`: the
//! emulator runs one read-write transaction at a time.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// Shadows `quorate::backend` (the implementer API) in the glob below: this
// crate is the implementation, and applications do not need that module.
#[allow(hidden_glob_reexports)]
mod backend;
#[cfg(feature = "drill")]
#[cfg_attr(docsrs, doc(cfg(feature = "drill")))]
pub mod deployment;
mod directed;
mod query;
pub mod settings;
pub mod sql;

pub use backend::{Credentials, SpannerBackend, SpannerConfig, VERSION_RETENTION};
pub use gcloud_spanner;
pub use query::{SelectRecords, SpannerQuery, SqlRead};
pub use quorate::*;
pub use settings::SpannerSettings;
pub use sql::NativeTable;

//! # quorate-cockroach
//!
//! quorate for CockroachDB and for PostgreSQL with hot standbys, over
//! tokio-postgres and deadpool (one pool per endpoint; no request is pinned
//! to a pool). The crate re-exports the whole of `quorate`: it is the one
//! dependency an application adds.
//!
//! | policy | PostgreSQL + standbys | CockroachDB |
//! |---|---|---|
//! | `Strong` | the primary | a normal read through any gateway |
//! | `Session` | a standby whose `pg_last_wal_replay_lsn()` covers the session's commit LSN (checked in the same round trip), else the primary | `AS OF SYSTEM TIME with_min_timestamp(…)` |
//! | `BoundedStaleness(d)` | a standby whose last replayed transaction is within `d`, else the primary | `AS OF SYSTEM TIME with_max_staleness('d')` |
//!
//! Writes are conditional (`UPDATE … WHERE key = $1 AND version = $4`,
//! `INSERT … ON CONFLICT DO NOTHING`) and record their idempotency key in the
//! same statement, so an ambiguous commit (a connection lost after the
//! statement was sent, SQLSTATE 40003) is resolved by looking the key up.
//! SQLSTATE 40001 is retried.
//!
//! ```no_run
//! use quorate_cockroach::{Dialect, Endpoint, PgBackend, PgConfig, Role};
//! use quorate_cockroach::{Client, ClientConfig, Critical, Precondition, Region};
//!
//! # async fn demo() -> Result<(), quorate_cockroach::Error> {
//! let endpoints = vec![
//!     Endpoint { region: Region::new("eu")?, role: Role::Primary, connection: "host=10.0.0.1 user=app".into() },
//!     Endpoint { region: Region::new("us")?, role: Role::Standby, connection: "host=10.1.0.1 user=app".into() },
//! ];
//! let backend = PgBackend::new(PgConfig::new("orders-db", Dialect::Postgres, endpoints, "us")?)?;
//! backend.create_schema().await?;
//! let client = Client::new(backend, ClientConfig::default())?;
//! let session = client.session();
//! let orders = client.collection::<String, Critical>("orders", &session)?;
//! orders.put("o-1", &"book".to_string(), Precondition::IfAbsent).await?;
//! # Ok(()) }
//! ```

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
mod execute;
mod query;
pub mod settings;
pub mod sql;
pub mod tls;

pub use backend::{Endpoint, Isolation, PgBackend, PgConfig, Role};
pub use execute::{Executed, SqlTransactions, TxBody};
pub use query::{SelectRecords, SqlQuery};
pub use quorate::*;
pub use rustls;
pub use settings::{PgRegionSettings, PgSettings};
pub use sql::{Dialect, Ident, NativeTable, TableName, Tables};
pub use tokio_postgres;

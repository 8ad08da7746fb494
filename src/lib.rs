//! # quorate
//!
//! Consistency made explicit for multi-region, active-active applications.
//!
//! Application code states, in types, how fresh each read must be and how
//! each write must be guarded; quorate maps that onto the database, checks
//! that the database delivered it, and retries safely:
//!
//! - [`ReadPolicy`]: `Strong`, `Session` (read-your-writes, monotonic reads)
//!   or `BoundedStaleness`; critical data accepts only a [`StrictRead`].
//! - [`Session`] and its portable [`SessionToken`], carried between services.
//! - [`Precondition`]al versioned writes returning [`Committed`], with
//!   read-after-write verification ([`Verify`]).
//! - Idempotent retries: one [`IdempotencyKey`] per logical write; ambiguous
//!   commits are resolved, never guessed.
//! - Every [`Read`] reports its [`Freshness`]: where it was served and how
//!   stale it may be. A read that misses its policy is escalated.
//!
//! ## Getting started
//!
//! Add the adapter of your database; each re-exports this crate, so it is
//! the one dependency:
//!
//! ```sh
//! cargo add quorate-cockroach   # CockroachDB, or PostgreSQL with hot standbys
//! cargo add quorate-dynamodb    # DynamoDB global tables (MREC and MRSC)
//! cargo add quorate-spanner     # Cloud Spanner
//! ```
//!
//! Build its backend from its configuration (or from settings: see
//! [`settings`]), make a [`Client`] over it, and read and write through
//! sessions and typed [`Collection`]s, as below on the embedded simulator.
//!
//! The crate's modules separate three audiences: the application API at the
//! root (with [`settings`] and, over HTTP, `propagation`); the contract an
//! adapter implements in [`backend`]; and test tooling — the simulator
//! ([`sim`]), fault injection ([`chaos`]), the drills (`drill`), histories
//! and their checker ([`history`]), and, under the `testing` feature, the
//! conformance suite and a proxy that loses exchanges. The embedded
//! simulator is itself a [`Backend`].
//!
//! ```
//! use quorate::sim::{Sim, SimConfig};
//! use quorate::{Client, ClientConfig, Critical, Precondition, StrictRead};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), quorate::Error> {
//! let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;
//! let client = Client::new(sim.at("us-east")?, ClientConfig::default())?;
//! let session = client.session();
//! let accounts = client.collection::<u64, Critical>("accounts", &session)?;
//!
//! let created = accounts.put("acct:7", &100, Precondition::IfAbsent).await?;
//! let read = accounts.get_with("acct:7", StrictRead::Session).await?;
//! assert_eq!(read.version(), Some(created.version));
//! println!("served by {} as {:?}", read.freshness.region, read.freshness.role);
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
mod catalog;
pub mod chaos;
mod client;
mod clock;
mod collection;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod conformance;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod cut_proxy;
#[cfg(feature = "drill")]
#[cfg_attr(docsrs, doc(cfg(feature = "drill")))]
pub mod drill;
mod error;
pub mod history;
pub mod json;
mod observe;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod paired;
mod policy;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod propagation;
mod random;
mod record;
mod retry;
mod routing;
mod session;
pub mod settings;
mod shard;
pub mod sim;
mod topology;

pub use backend::{
    Backend, IdempotencyKey, Transacted, TxOp, MAX_IDEMPOTENCY_KEY, MAX_TRANSACTION_BYTES,
    MAX_TRANSACTION_RECORDS,
};
// The backend-implementer API, documented in `quorate::backend`; also at the
// root for the adapters' sake.
#[doc(hidden)]
pub use backend::{
    decode_transaction_versions, push_transaction_version, transaction_binding, Capabilities,
    DbOperation, DbTarget, Probe, ReadPlan, TransactRequest, TxAction, WriteRequest,
};
#[doc(hidden)]
pub use catalog::{distinct_columns, Catalog};
pub use client::{
    Client, ClientConfig, Hedge, Queried, QueryPlan, RegionHealth, ShownPoint, Transaction, Verify,
    VerifyRegions, WriteOptions,
};
pub use clock::{Clock, OffsetSample, SkewedClock, SystemClock};
pub use collection::{
    Class, Collection, Critical, DataClass, Peripheral, PolicyBook, PolicyEntry, Records,
    DEFAULT_UPDATE_ATTEMPTS, MAX_BATCH,
};
pub use error::{BoxError, Error, Retryability};
pub use observe::names as metric_names;
pub use policy::{PolicyError, ReadPolicy, Staleness, StrictRead, DEFAULT_MAX_STALENESS};
pub use record::{
    Committed, Freshness, Mutation, Point, Precondition, Read, ReplicaRole, Version, Versioned,
};
pub use retry::{RetryBudget, RetryPolicy};
pub use routing::Circuit;
#[cfg(feature = "signed-tokens")]
#[cfg_attr(docsrs, doc(cfg(feature = "signed-tokens")))]
pub use session::SigningKey;
pub use session::{
    Scope, Session, SessionFloor, SessionToken, TokenError, MAX_SCOPE_LEN, MAX_TOKEN_KEYS,
    MAX_TOKEN_LEN, TOKEN_FORMAT,
};
pub use settings::{ClientSettings, ClientSettingsBuilder, Loader, SettingsError};
pub use topology::{Region, RegionSpec, Topology, TopologyError, TopologySpec, MAX_REGION_NAME};

/// Values travel as shared byte buffers.
pub use bytes::Bytes;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

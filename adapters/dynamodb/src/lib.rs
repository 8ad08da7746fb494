//! # quorate-dynamodb
//!
//! quorate for DynamoDB global tables, over aws-sdk-dynamodb with one SDK
//! client per region. The crate re-exports the whole of `quorate`: it is the
//! one dependency an application adds.
//!
//! | policy | multi-region eventual (MREC) | multi-region strong (MRSC) |
//! |---|---|---|
//! | `Strong` | `ConsistentRead` in the key's home region | `ConsistentRead` in any region |
//! | `Session` | an eventually consistent read nearby, accepted only if the item's version is at least the session's for that key (and, for keys the session no longer tracks, its write time at least the session's), else escalated | same |
//! | `BoundedStaleness(d)` | an eventually consistent read nearby, accepted only if the item's `written_at` proves it within `d` (plus the clock error), else escalated | same |
//!
//! Writes carry a `version` attribute and a `ConditionExpression`
//! (`attribute_not_exists(pk)`, `version = :v`) with
//! `ReturnValuesOnConditionCheckFailure = ALL_OLD`, so a conflict returns
//! the current version. The idempotency item is written in the same
//! `TransactWriteItems` (with a `ClientRequestToken`) and kept for a
//! configurable TTL, beyond DynamoDB's 10-minute token window; an ambiguous
//! outcome is resolved by reading it. MRSC tables refuse
//! `TransactWriteItems`: there a write reads the item and puts it whole
//! with a map of the record's recent writes (idempotency key → version,
//! write time, writer), so that the write and its evidence are one item;
//! a lookup that finds nothing fences the record by moving its write time
//! past every earlier attempt's start (two round trips per write instead
//! of one; multi-record writes are refused with a typed error). Under
//! MREC, writes go to the key's
//! home region so conditions are checked in one place (with
//! health-triggered failover when [`ClientConfig::home_failover`] is set).
//!
//! ```no_run
//! use quorate_dynamodb::{DynamoBackend, DynamoConfig, RegionClient};
//! use quorate_dynamodb::{Client, ClientConfig, Critical, Precondition, Region};
//!
//! # async fn demo() -> Result<(), quorate_dynamodb::Error> {
//! let mut regions = Vec::new();
//! for (name, aws) in [("eu", "eu-west-1"), ("us", "us-east-1")] {
//!     let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
//!         .region(aws_config::Region::new(aws))
//!         .load()
//!         .await;
//!     regions.push(RegionClient {
//!         region: Region::new(name)?,
//!         client: quorate_dynamodb::aws_sdk_dynamodb::Client::new(&sdk),
//!     });
//! }
//! let config = DynamoConfig::new("orders-global", "orders", regions, "us")?;
//! let backend = DynamoBackend::connect(config).await?;
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
pub mod item;
mod native;
mod query;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod replicator;
pub mod settings;

pub use aws_config;
pub use aws_sdk_dynamodb;
/// The DynamoDB Streams SDK the [`replicator`] reads with.
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub use aws_sdk_dynamodbstreams;
pub use backend::{DynamoBackend, DynamoConfig, Home, Mode, RegionClient};
pub use item::ItemError;
pub use native::{KeyAttribute, KeyKind, NativeTable};
pub use query::{Partition, PartitionQuery, PartitionRecords};
pub use quorate::*;
pub use settings::{DynamoRegionSettings, DynamoSettings};

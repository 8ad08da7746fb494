//! Typed handles that separate critical from peripheral data.
//!
//! A [`Collection<T, Critical>`] accepts only [`StrictRead`] policies: asking
//! it for a bounded-staleness read does not compile.
//!
//! ```compile_fail
//! use quorate::{Collection, Critical, ReadPolicy, Staleness};
//! use quorate::sim::Sim;
//!
//! async fn stale_balance(accounts: Collection<u64, Critical, Sim>) {
//!     let bound = ReadPolicy::BoundedStaleness(Staleness::from_millis(500).unwrap());
//!     // error[E0308]: a critical collection takes a `StrictRead`
//!     let _ = accounts.get_with("acct:7", bound).await;
//! }
//! ```
//!
//! The same call on a peripheral collection compiles:
//!
//! ```
//! use quorate::{Collection, Peripheral, ReadPolicy, Staleness};
//! use quorate::sim::Sim;
//!
//! async fn feed(items: Collection<String, Peripheral, Sim>) {
//!     let bound = ReadPolicy::BoundedStaleness(Staleness::from_millis(500).unwrap());
//!     let _ = items.get_with("item:1", bound).await;
//! }
//! ```
//!
//! For names known only at run time, a [`PolicyBook`] does the same check
//! and returns [`Error::PolicyViolation`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Backend;
use crate::client::{Client, Verify, WriteOptions};
use crate::error::Error;
use crate::policy::{ReadPolicy, StrictRead};
use crate::record::{Committed, Precondition, Read};
use crate::session::Session;

mod sealed {
    pub trait Sealed {}
}

/// A class of data: what read policies it accepts and whether writes are
/// verified by default.
pub trait DataClass: sealed::Sealed + Send + Sync + 'static {
    /// The policies this class accepts.
    type Policy: Into<ReadPolicy> + Copy + Debug + Send + Sync + 'static;
    /// `critical` or `peripheral`.
    const NAME: &'static str;
    /// The policy of [`Collection::get`] unless changed.
    fn default_policy() -> Self::Policy;
    /// The strong policy, which every class accepts.
    fn strong() -> Self::Policy;
    /// Whether writes are verified (read-after-write) by default.
    fn verify_by_default() -> bool;
}

/// Critical state: balances, orders, leases. Reads are `Strong` or `Session`
/// only; writes are verified by default.
#[derive(Debug, Clone, Copy)]
pub enum Critical {}

/// Peripheral state: feeds, caches, analytics. Reads may opt into bounded
/// staleness.
#[derive(Debug, Clone, Copy)]
pub enum Peripheral {}

impl sealed::Sealed for Critical {}
impl sealed::Sealed for Peripheral {}

impl DataClass for Critical {
    type Policy = StrictRead;
    const NAME: &'static str = "critical";
    fn default_policy() -> StrictRead {
        StrictRead::Strong
    }
    fn strong() -> StrictRead {
        StrictRead::Strong
    }
    fn verify_by_default() -> bool {
        true
    }
}

impl DataClass for Peripheral {
    type Policy = ReadPolicy;
    const NAME: &'static str = "peripheral";
    fn default_policy() -> ReadPolicy {
        ReadPolicy::Session
    }
    fn strong() -> ReadPolicy {
        ReadPolicy::Strong
    }
    fn verify_by_default() -> bool {
        false
    }
}

/// Records a query found: each as its key in its collection with its
/// version and value.
pub type Records<T> = Vec<(String, crate::Versioned<T>)>;

/// The most keys one [`Collection::get_many`] reads.
pub const MAX_BATCH: usize = 100;

/// How many times [`Collection::update`] re-reads and retries after a
/// conflicting write before it gives up.
pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 8;

/// A typed handle on the records named `<name>/<key>`, in one session.
///
/// Values are stored as JSON. The data class is a type: a [`Critical`]
/// collection reads only with a [`StrictRead`](crate::StrictRead), so a
/// stale read of it does not compile; a [`Peripheral`] one may opt into
/// bounded staleness.
///
/// ```
/// use quorate::sim::{Sim, SimConfig};
/// use quorate::{Client, ClientConfig, Critical, Peripheral, Precondition, ReadPolicy, StrictRead};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), quorate::Error> {
/// let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
/// let client = Client::new(sim.at("us")?, ClientConfig::default())?;
/// let session = client.session();
/// let balances = client.collection::<u64, Critical>("balances", &session)?;
/// let created = balances.put("acct:7", &100, Precondition::IfAbsent).await?;
/// // A read-modify-write, conditional on the version it read.
/// let moved = balances.update("acct:7", |b| b.map_or(0, |b| b - 30)).await?;
/// assert!(moved.version > created.version);
/// assert_eq!(balances.get_with("acct:7", StrictRead::Strong).await?.value.map(|v| v.value), Some(70));
///
/// let feed = client.collection::<String, Peripheral>("feed", &session)?;
/// let _maybe_stale = feed.get_with("latest", "bounded:5000".parse::<ReadPolicy>()?).await?;
/// # Ok(()) }
/// ```
pub struct Collection<T, C: DataClass, B> {
    client: Client<B>,
    session: Session,
    name: Arc<str>,
    policy: C::Policy,
    write: WriteOptions,
    update_attempts: u32,
    _marker: PhantomData<fn() -> T>,
}

impl<T, C: DataClass, B> Clone for Collection<T, C, B> {
    fn clone(&self) -> Self {
        Collection {
            client: self.client.clone(),
            session: self.session.clone(),
            name: self.name.clone(),
            policy: self.policy,
            write: self.write.clone(),
            update_attempts: self.update_attempts,
            _marker: PhantomData,
        }
    }
}

impl<B: Backend> Client<B> {
    /// A typed handle on the collection `name` in `session`.
    ///
    /// The name must be 1–64 bytes without `/` or control characters.
    pub fn collection<T, C: DataClass>(
        &self,
        name: &str,
        session: &Session,
    ) -> Result<Collection<T, C, B>, Error> {
        crate::catalog::check_collection_name(name)?;
        Ok(Collection {
            client: self.clone(),
            session: session.clone(),
            name: Arc::from(name),
            policy: C::default_policy(),
            write: WriteOptions {
                verify: C::verify_by_default().then(Verify::default),
                ..Default::default()
            },
            update_attempts: DEFAULT_UPDATE_ATTEMPTS,
            _marker: PhantomData,
        })
    }
}

impl<T, C, B> Collection<T, C, B>
where
    T: Serialize + DeserializeOwned,
    C: DataClass,
    B: Backend,
{
    /// The same handle with another default read policy.
    pub fn with_policy(mut self, policy: C::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The same handle with other write options (verification, deadline).
    pub fn with_write_options(mut self, options: WriteOptions) -> Self {
        self.write = options;
        self
    }

    /// The same handle with another number of read-modify-write rounds for
    /// [`Collection::update`] (at least 1; [`DEFAULT_UPDATE_ATTEMPTS`] by
    /// default).
    pub fn with_update_attempts(mut self, attempts: u32) -> Result<Self, Error> {
        if attempts == 0 {
            return Err(Error::InvalidInput(
                "update attempts must be at least 1".into(),
            ));
        }
        self.update_attempts = attempts;
        Ok(self)
    }

    /// The session the handle reads and writes in.
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}/{}", self.name, key)
    }

    /// Reads `key` under the handle's default policy.
    pub async fn get(&self, key: &str) -> Result<Read<T>, Error> {
        self.get_with(key, self.policy).await
    }

    /// Reads `key` under `policy` (for critical data, a [`StrictRead`]).
    pub async fn get_with(&self, key: &str, policy: C::Policy) -> Result<Read<T>, Error> {
        let read = self
            .client
            .read(&self.session, &self.full_key(key), policy.into())
            .await?;
        decode(read)
    }

    /// Reads `keys` under the handle's default policy (see
    /// [`Collection::get_many_with`]).
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Read<T>>, Error> {
        self.get_many_with(keys, self.policy).await
    }

    /// Reads `keys` under `policy`, concurrently, each as
    /// [`Collection::get_with`] reads one (its own freshness check,
    /// escalation and session observation); the results are in the order
    /// of `keys`, and the first error fails the batch. The batch is not one
    /// snapshot: records that must change together are written together
    /// ([`Client::transact`]). At most [`MAX_BATCH`] keys.
    pub async fn get_many_with(
        &self,
        keys: &[&str],
        policy: C::Policy,
    ) -> Result<Vec<Read<T>>, Error> {
        if keys.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a batch reads at most {MAX_BATCH} keys, not {}",
                keys.len()
            )));
        }
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        let reads = crate::client::join_all(
            full.iter()
                .map(|k| self.client.read(&self.session, k, policy.into())),
        )
        .await;
        reads.into_iter().map(|r| r.and_then(decode)).collect()
    }

    /// Writes `value` at `key` if `precondition` holds.
    pub async fn put(
        &self,
        key: &str,
        value: &T,
        precondition: Precondition,
    ) -> Result<Committed, Error> {
        let bytes = crate::json::to_vec(value)?;
        self.client
            .write(
                &self.session,
                &self.full_key(key),
                bytes.into(),
                precondition,
                &self.write,
            )
            .await
    }

    /// Deletes `key` if `precondition` holds (see [`Client::delete`]): the
    /// delete is a version of its own, and a record put later with
    /// `IfAbsent` continues from it.
    pub async fn delete(&self, key: &str, precondition: Precondition) -> Result<Committed, Error> {
        self.client
            .delete(
                &self.session,
                &self.full_key(key),
                precondition,
                &self.write,
            )
            .await
    }

    /// Adds a put of `value` at `key` to a multi-record write (see
    /// [`Client::transaction`]).
    pub fn put_in(
        &self,
        transaction: &mut crate::Transaction<B>,
        key: &str,
        value: &T,
        precondition: Precondition,
    ) -> Result<(), Error> {
        let bytes = crate::json::to_vec(value)?;
        transaction.put(self.full_key(key), bytes.into(), precondition);
        Ok(())
    }

    /// Adds a delete of `key` to a multi-record write.
    pub fn delete_in(
        &self,
        transaction: &mut crate::Transaction<B>,
        key: &str,
        precondition: Precondition,
    ) {
        transaction.delete(self.full_key(key), precondition);
    }

    /// Adds a condition on `key` to a multi-record write: it writes nothing
    /// there, but applies only if `precondition` holds.
    pub fn check_in(
        &self,
        transaction: &mut crate::Transaction<B>,
        key: &str,
        precondition: Precondition,
    ) {
        transaction.check(self.full_key(key), precondition);
    }

    /// The collection's name (the prefix of its records' keys).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle's default read policy.
    pub fn policy(&self) -> C::Policy {
        self.policy
    }

    /// The client the handle reads and writes through.
    pub fn client(&self) -> &Client<B> {
        &self.client
    }

    /// Runs a query of this collection's records under `policy`, with the
    /// guarantees of [`Client::query`] (planned, checked against the policy
    /// and the session, escalated, retried, the session advanced), and
    /// decodes what it found. `run` serves one [`QueryPlan`](crate::QueryPlan)
    /// and returns each record it found as its key within the collection
    /// with its version and stored value, and the freshness it served them
    /// with; adapters wrap it (`quorate-cockroach`'s `SelectRecords`, say).
    /// `home_key`, a key within the collection, names the key whose home
    /// region serves strong queries where strong reads go to a key's home.
    /// Under a strong or session policy the session also records every
    /// record's version, as a point read of it would. A value that does not
    /// decode as `T` fails the query with [`Error::Serialization`].
    pub async fn query_with<F, Fut>(
        &self,
        policy: C::Policy,
        home_key: Option<&str>,
        run: F,
    ) -> Result<crate::Queried<Vec<(String, crate::Versioned<T>)>>, Error>
    where
        F: FnMut(crate::QueryPlan<'_>) -> Fut,
        Fut: std::future::Future<
            Output = Result<
                (
                    Vec<(String, crate::Versioned<bytes::Bytes>)>,
                    crate::Freshness,
                ),
                Error,
            >,
        >,
    {
        let policy: ReadPolicy = policy.into();
        let home = home_key.map(|k| self.full_key(k));
        let queried = self
            .client
            .query(&self.session, policy, home.as_deref(), run)
            .await?;
        let tracked = matches!(policy, ReadPolicy::Strong | ReadPolicy::Session);
        let mut rows = Vec::with_capacity(queried.rows.len());
        for (key, record) in queried.rows {
            if tracked {
                self.session
                    .observe(&self.full_key(&key), Some(record.version), None);
            }
            rows.push((
                key,
                crate::Versioned {
                    version: record.version,
                    value: serde_json::from_slice(&record.value)?,
                },
            ));
        }
        Ok(crate::Queried {
            rows,
            freshness: queried.freshness,
        })
    }

    /// Read-modify-write: reads `key` strongly, computes the new value from
    /// the old one, and writes it only if nobody committed in between; on a
    /// conflict it reads again and retries, at most
    /// [`DEFAULT_UPDATE_ATTEMPTS`] times (see
    /// [`Collection::with_update_attempts`]). When every round met a
    /// conflicting write it fails with [`Error::UpdateContended`], which is
    /// retryable: nothing of it applied.
    pub async fn update(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> T,
    ) -> Result<Committed, Error> {
        let full = self.full_key(key);
        let mut last = None;
        for _ in 0..self.update_attempts {
            let read = decode::<T>(
                self.client
                    .read(&self.session, &full, ReadPolicy::Strong)
                    .await?,
            )?;
            let (precondition, old) = match read.value {
                Some(v) => (Precondition::IfVersion(v.version), Some(v.value)),
                None => (Precondition::IfAbsent, None),
            };
            let bytes = crate::json::to_vec(&f(old))?;
            match self
                .client
                .write(
                    &self.session,
                    &full,
                    bytes.into(),
                    precondition,
                    &self.write,
                )
                .await
            {
                Err(e @ Error::Conflict { .. }) => last = Some(e),
                other => return other,
            }
        }
        match last {
            Some(conflict) => Err(Error::UpdateContended {
                key: full,
                attempts: self.update_attempts,
                last: Box::new(conflict),
            }),
            None => Err(Error::InvalidInput(
                "update attempts must be at least 1".into(),
            )),
        }
    }
}

fn decode<T: DeserializeOwned>(read: Read<bytes::Bytes>) -> Result<Read<T>, Error> {
    let Read {
        value,
        deleted,
        freshness,
    } = read;
    let value = match value {
        Some(v) => Some(crate::Versioned {
            version: v.version,
            value: serde_json::from_slice(&v.value)?,
        }),
        None => None,
    };
    Ok(Read {
        value,
        deleted,
        freshness,
    })
}

/// The class of a name in a [`PolicyBook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Strict reads only.
    Critical,
    /// Any read policy.
    Peripheral,
}

/// One entry of a [`PolicyBook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyEntry {
    /// The class of the name.
    pub class: Class,
    /// The policy used when a read names none.
    pub default: ReadPolicy,
}

/// Names known only at run time, mapped to a class and a default policy.
///
/// Unknown names are critical: strict unless declared otherwise.
///
/// ```
/// use quorate::{PolicyBook, ReadPolicy, StrictRead, Error};
///
/// let book = PolicyBook::new()
///     .critical("accounts", StrictRead::Strong)
///     .peripheral("feed", "bounded:5000".parse()?);
/// assert_eq!(book.resolve("feed", None)?, "bounded:5000".parse()?);
/// assert!(matches!(
///     book.resolve("accounts", Some("bounded:100".parse()?)),
///     Err(Error::PolicyViolation { .. })
/// ));
/// assert_eq!(book.resolve("unknown", None)?, ReadPolicy::Strong);
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    try_from = "HashMap<String, PolicyEntry>",
    into = "HashMap<String, PolicyEntry>"
)]
pub struct PolicyBook {
    entries: HashMap<String, PolicyEntry>,
}

impl PolicyBook {
    /// An empty book: every name is critical and read strongly.
    pub fn new() -> PolicyBook {
        PolicyBook::default()
    }

    /// Declares a critical name.
    pub fn critical(mut self, name: &str, default: StrictRead) -> PolicyBook {
        self.entries.insert(
            name.to_owned(),
            PolicyEntry {
                class: Class::Critical,
                default: default.into(),
            },
        );
        self
    }

    /// Declares a peripheral name.
    pub fn peripheral(mut self, name: &str, default: ReadPolicy) -> PolicyBook {
        self.entries.insert(
            name.to_owned(),
            PolicyEntry {
                class: Class::Peripheral,
                default,
            },
        );
        self
    }

    /// The class of a name (critical when undeclared).
    pub fn class(&self, name: &str) -> Class {
        self.entries.get(name).map_or(Class::Critical, |e| e.class)
    }

    /// The policy to read `name` with: `requested`, or the name's default;
    /// a relaxed policy on a critical name is a [`Error::PolicyViolation`].
    pub fn resolve(&self, name: &str, requested: Option<ReadPolicy>) -> Result<ReadPolicy, Error> {
        let entry = self.entries.get(name);
        let policy = requested
            .or(entry.map(|e| e.default))
            .unwrap_or(ReadPolicy::Strong);
        if self.class(name) == Class::Critical && policy.is_relaxed() {
            return Err(Error::PolicyViolation {
                name: name.to_owned(),
                policy,
            });
        }
        Ok(policy)
    }
}

impl TryFrom<HashMap<String, PolicyEntry>> for PolicyBook {
    type Error = Error;
    fn try_from(entries: HashMap<String, PolicyEntry>) -> Result<Self, Error> {
        for (name, e) in &entries {
            if e.class == Class::Critical && e.default.is_relaxed() {
                return Err(Error::PolicyViolation {
                    name: name.clone(),
                    policy: e.default,
                });
            }
        }
        Ok(PolicyBook { entries })
    }
}

impl From<PolicyBook> for HashMap<String, PolicyEntry> {
    fn from(b: PolicyBook) -> Self {
        b.entries
    }
}

impl<T, C: DataClass, B> Debug for Collection<T, C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("class", &C::NAME)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_from_configuration_rejects_relaxed_critical_defaults() {
        let bad = r#"{"accounts":{"class":"critical","default":"bounded:100"}}"#;
        assert!(serde_json::from_str::<PolicyBook>(bad).is_err());
        let good = r#"{"feed":{"class":"peripheral","default":"bounded:100"}}"#;
        let book: PolicyBook = serde_json::from_str(good).unwrap();
        assert_eq!(book.class("feed"), Class::Peripheral);
        assert_eq!(book.class("other"), Class::Critical);
    }
}

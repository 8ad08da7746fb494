//! The contract an adapter implements.
//!
//! An adapter maps a resolved plan onto its database and classifies its
//! errors; everything else (policy enforcement, sessions, verification,
//! retries, routing, metrics) is written once in [`Client`](crate::Client).
//! The helpers an adapter needs beside the trait are here too:
//! [`Catalog`] (collections mapped onto tables of the application's own),
//! [`distinct_columns`], and the encoding of a multi-record write's
//! versions ([`push_transaction_version`], [`decode_transaction_versions`],
//! [`transaction_binding`]).

pub use crate::catalog::{distinct_columns, Catalog};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Error;
use crate::policy::ReadPolicy;
use crate::record::{Committed, Mutation, Point, Precondition, Read, ReplicaRole, Version};
use crate::session::{Scope, SessionFloor};
use crate::topology::{Region, Topology};

/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Names one logical write across all its retries.
///
/// Backends store it with the write, in the same transaction, so that an
/// ambiguous outcome can be resolved by looking it up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// Validates a caller-chosen key: 1–128 printable ASCII characters.
    pub fn new(key: &str) -> Result<IdempotencyKey, Error> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::InvalidInput(format!(
                "idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters, got {} bytes",
                key.len()
            )));
        }
        Ok(IdempotencyKey(Arc::from(key)))
    }

    /// A fresh key, unique with overwhelming probability across processes.
    ///
    /// `q-<prefix>-<n>`: the prefix is random per process and distinct per
    /// thread within it, and `n` counts the thread's keys, so that making a
    /// key touches no state another thread writes.
    pub fn generate() -> IdempotencyKey {
        use std::cell::Cell;
        use std::io::Write as _;
        static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static THREADS: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            // (prefix, keys made so far). A bijective mix of the process's
            // random seed and the thread's number: distinct per thread.
            static THREAD: Cell<(u64, u64)> = Cell::new((
                crate::random::SplitMix64::new(
                    *PROCESS.get_or_init(crate::random::process_entropy)
                        ^ THREADS.fetch_add(1, Ordering::Relaxed),
                )
                .next_u64(),
                0,
            ));
        }
        let (prefix, n) = THREAD.with(|t| {
            let (prefix, n) = t.get();
            t.set((prefix, n.wrapping_add(1)));
            (prefix, n)
        });
        // At most 2 + 16 + 1 + 16 bytes.
        let mut buf = [0u8; 40];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "q-{prefix:016x}-{n:x}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        // Only ASCII hex digits and dashes were written.
        let text = std::str::from_utf8(&buf[..len]).unwrap_or("q");
        IdempotencyKey(Arc::from(text))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A read resolved by the client: where, from which replica, and what the
/// session requires.
#[derive(Clone, Debug)]
pub struct ReadPlan<'a> {
    /// The key.
    pub key: &'a str,
    /// The region to serve the read from (its gateway or replica).
    pub region: &'a Region,
    /// Leader (linearizable) or follower.
    pub role: ReplicaRole,
    /// The policy the caller asked for (a follower plan may map it natively,
    /// e.g. `with_max_staleness`).
    pub policy: ReadPolicy,
    /// What the caller's session requires; a backend may use it natively
    /// (e.g. `with_min_timestamp`, a standby's replay LSN). The client checks
    /// the result regardless.
    pub floor: SessionFloor,
    /// The caller's deadline. A backend that waits (for a replica to catch
    /// up, say) must not wait past it.
    pub deadline: Instant,
}

/// A conditional write resolved by the client.
#[derive(Clone, Debug)]
pub struct WriteRequest<'a> {
    /// The key.
    pub key: &'a str,
    /// The new value, or a delete.
    pub mutation: Mutation<'a>,
    /// When the write applies.
    pub precondition: Precondition,
    /// The logical write this attempt belongs to. A backend stores it in the
    /// same transaction as the data and, when it already holds an outcome for
    /// it, returns that outcome instead of applying the write again.
    pub idempotency_key: Option<&'a IdempotencyKey>,
    /// The region whose gateway receives the write.
    pub region: &'a Region,
    /// The caller's deadline.
    pub deadline: Instant,
}

/// What a multi-record write does to one of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxAction<'a> {
    /// Stores a value or deletes the record, as a new version of it.
    Write(Mutation<'a>),
    /// Writes nothing: the record's precondition must hold for the whole
    /// write to apply (a condition check on a record the write depends on).
    Check,
}

/// One record of a multi-record write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxOp<'a> {
    /// The record's key.
    pub key: &'a str,
    /// What happens to it.
    pub action: TxAction<'a>,
    /// When it may happen; every record's must hold, or nothing applies.
    pub precondition: Precondition,
}

impl<'a> TxOp<'a> {
    /// Stores `value` at `key` if `precondition` holds.
    pub fn put(key: &'a str, value: &'a Bytes, precondition: Precondition) -> TxOp<'a> {
        TxOp {
            key,
            action: TxAction::Write(Mutation::Put(value)),
            precondition,
        }
    }

    /// Deletes `key` if `precondition` holds.
    pub fn delete(key: &'a str, precondition: Precondition) -> TxOp<'a> {
        TxOp {
            key,
            action: TxAction::Write(Mutation::Delete),
            precondition,
        }
    }

    /// Writes nothing to `key`, but the write applies only if
    /// `precondition` holds for it.
    pub fn check(key: &'a str, precondition: Precondition) -> TxOp<'a> {
        TxOp {
            key,
            action: TxAction::Check,
            precondition,
        }
    }

    /// Whether the record is written (not only checked).
    pub fn writes(&self) -> bool {
        matches!(self.action, TxAction::Write(_))
    }
}

/// The most records one multi-record write may name (DynamoDB's
/// `TransactWriteItems` limit, which every backend keeps).
pub const MAX_TRANSACTION_RECORDS: usize = 100;

/// The most value bytes one multi-record write may carry (DynamoDB's 4 MB
/// transaction limit, which every backend keeps).
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// A multi-record write resolved by the client: all of its records apply,
/// atomically, or none does.
#[derive(Clone, Debug)]
pub struct TransactRequest<'a> {
    /// The records, each named once, at least one of them written.
    pub ops: &'a [TxOp<'a>],
    /// The logical write this attempt belongs to. A backend records its
    /// outcome (every written record's version) in the same transaction and,
    /// when it already holds one, returns it instead of applying again.
    pub idempotency_key: Option<&'a IdempotencyKey>,
    /// The region whose gateway receives the write.
    pub region: &'a Region,
    /// The caller's deadline.
    pub deadline: Instant,
}

impl TransactRequest<'_> {
    /// The keys of the records, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|op| op.key)
    }
}

/// The outcome of a committed multi-record write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transacted {
    /// Where in the commit order the whole write landed (session tokens
    /// advance to it).
    pub point: Point,
    /// The region whose leader committed it.
    pub region: Region,
    /// The version each written record got, in the request's order
    /// (records only checked are not listed).
    pub versions: Vec<(String, Version)>,
}

impl Transacted {
    /// The version `key` got, if the write wrote it.
    pub fn version_of(&self, key: &str) -> Option<Version> {
        self.versions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }
}

/// Appends a written record's version to a multi-record write's versions as
/// backends keep them in its idempotency record: `index:version`, by the
/// record's place in the write, comma-separated.
pub fn push_transaction_version(versions: &mut String, index: usize, version: Version) {
    use std::fmt::Write as _;
    if !versions.is_empty() {
        versions.push(',');
    }
    let _ = write!(versions, "{index}:{}", version.0);
}

/// The versions [`push_transaction_version`] kept, each named by its
/// record's key in `keys`; `None` when they do not fit. An empty text is
/// an outcome that names no records (a closure transaction's).
pub fn decode_transaction_versions(text: &str, keys: &[&str]) -> Option<Vec<(String, Version)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|pair| {
            let (i, v) = pair.split_once(':')?;
            let key = keys.get(i.parse::<usize>().ok()?)?;
            let v = v.parse::<u64>().ok().filter(|v| *v > 0)?;
            Some(((*key).to_owned(), Version(v)))
        })
        .collect()
}

/// The name an idempotency record of a multi-record write is bound to in
/// place of a record key: `txn:` and a 64-bit hash of its keys, in order,
/// so that reusing the key for a write of other records is refused.
pub fn transaction_binding<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |b: u8| h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    for key in keys {
        for b in (key.len() as u64).to_le_bytes() {
            mix(b);
        }
        for b in key.bytes() {
            mix(b);
        }
    }
    format!("txn:{h:016x}")
}

/// The kind of request one attempt sends, for its trace span and the
/// `db.client.operation.duration` histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DbOperation {
    /// [`Backend::read`] (and queries).
    Read,
    /// [`Backend::write`].
    Write,
    /// [`Backend::transact`].
    Transact,
    /// [`Backend::lookup`] and [`Backend::lookup_transaction`].
    Lookup,
    /// [`Backend::probe`].
    Probe,
}

impl DbOperation {
    /// quorate's name for it (`read`, `write`, …), the default of
    /// [`Backend::db_operation_name`].
    pub fn label(self) -> &'static str {
        match self {
            DbOperation::Read => "read",
            DbOperation::Write => "write",
            DbOperation::Transact => "transact",
            DbOperation::Lookup => "lookup",
            DbOperation::Probe => "probe",
        }
    }
}

/// Where one attempt goes, in OpenTelemetry's database conventions
/// (`db.namespace`, `db.collection.name`, `server.address`,
/// `server.port`). Asked of the backend only when the attempt's span is
/// recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbTarget {
    /// The database (PostgreSQL's database, Spanner's database path).
    pub namespace: Option<String>,
    /// The table.
    pub collection: Option<String>,
    /// The server's host name or address.
    pub server_address: Option<String>,
    /// The server's port.
    pub server_port: Option<u16>,
}

impl DbTarget {
    /// A target naming nothing yet.
    pub fn new() -> DbTarget {
        DbTarget::default()
    }

    /// With `db.namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> DbTarget {
        self.namespace = Some(namespace.into());
        self
    }

    /// With `db.collection.name`.
    pub fn collection(mut self, collection: impl Into<String>) -> DbTarget {
        self.collection = Some(collection.into());
        self
    }

    /// With `server.address` and, when known, `server.port`.
    pub fn server(mut self, address: impl Into<String>, port: Option<u16>) -> DbTarget {
        self.server_address = Some(address.into());
        self.server_port = port;
        self
    }
}

/// What a region reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The region probed.
    pub region: Region,
    /// The server's wall clock when it answered, in nanoseconds since the
    /// Unix epoch.
    pub server_time_nanos: u64,
    /// How far the region's replicas are behind its leaders, when known.
    pub replica_lag: Option<Duration>,
}

/// What a backend can do; the client plans reads and writes from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Linearizable reads can be served through any region's gateway
    /// (CockroachDB, Spanner, DynamoDB MRSC). When false, strong reads go to
    /// the key's [`Backend::home_region`].
    pub strong_reads_anywhere: bool,
    /// Writes can be sent to any region's gateway. When false (DynamoDB
    /// global tables in eventual mode), writes go to the key's home region so
    /// that conditional writes are checked in one place.
    pub writes_anywhere: bool,
    /// Followers can serve reads and report their freshness.
    pub follower_reads: bool,
    /// The largest staleness bound the backend's history supports.
    pub max_staleness: Duration,
    /// The clock offset beyond which the database's guarantees break
    /// (CockroachDB `max_offset`), if it has one.
    pub max_clock_offset: Option<Duration>,
}

/// The database side of quorate: one implementation per adapter.
///
/// Methods return `Send` futures so clients can be used from any runtime
/// task. Implementations classify every error through [`Error::retryability`]:
/// in particular, an error after a commit was sent must be ambiguous.
pub trait Backend: Send + Sync + 'static {
    /// The cluster or database this backend talks to; session tokens carry it.
    fn scope(&self) -> &Scope;

    /// The regions and the local one.
    fn topology(&self) -> &Topology;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Writes `point` the way this database shows its positions
    /// (PostgreSQL: a WAL position such as `0/3000060`); quorate's traces
    /// and [`Client::show_point`](crate::Client::show_point) show points
    /// this way. By default, [`Point`]'s own form (`wall.logical`, as
    /// CockroachDB shows an HLC timestamp).
    fn fmt_point(&self, point: Point, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&point, f)
    }

    /// The region that owns `key` for strong reads and writes when
    /// [`Capabilities::strong_reads_anywhere`] or
    /// [`Capabilities::writes_anywhere`] is false.
    ///
    /// Borrowed: every strong read of such a backend asks, and a returned
    /// clone would move the region's reference count between cores.
    fn home_region(&self, key: &str) -> Option<&Region> {
        let _ = key;
        None
    }

    /// Reads one key under a resolved plan.
    fn read(&self, plan: &ReadPlan<'_>) -> impl Future<Output = Result<Read<Bytes>, Error>> + Send;

    /// Writes one key if its precondition holds: stores a value or deletes
    /// the record ([`Mutation`]), either way as a new version of the key —
    /// a delete leaves a tombstone that reads report
    /// ([`Read::deleted`](crate::Read::deleted)) and that a later write
    /// continues from. A failed precondition is [`Error::Conflict`]
    /// carrying the current version (`None` when absent or deleted).
    fn write(
        &self,
        request: &WriteRequest<'_>,
    ) -> impl Future<Output = Result<Committed, Error>> + Send;

    /// The outcome recorded for an idempotency key, read linearizably through
    /// `region`: `Some` if the logical write committed, `None` if it did not
    /// (and, from now on, cannot).
    fn lookup(
        &self,
        region: &Region,
        key: &str,
        idempotency_key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<Committed>, Error>> + Send;

    /// Writes several records atomically: every written record's new
    /// version and every record's precondition, or nothing. A failed
    /// precondition is [`Error::Conflict`] naming the first record whose
    /// precondition failed and its current version. The idempotency record
    /// is bound to [`transaction_binding`] of the request's keys.
    fn transact(
        &self,
        request: &TransactRequest<'_>,
    ) -> impl Future<Output = Result<Transacted, Error>> + Send;

    /// [`Backend::lookup`] for a multi-record write whose records are
    /// `keys` (in the request's order): its outcome, or `None` once it can
    /// no longer commit.
    fn lookup_transaction(
        &self,
        region: &Region,
        keys: &[&str],
        idempotency_key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<Transacted>, Error>> + Send;

    /// `db.system.name` of this database in OpenTelemetry's conventions
    /// (`postgresql`, `cockroachdb`, `aws.dynamodb`, `gcp.spanner`).
    fn db_system(&self) -> &'static str {
        "other_sql"
    }

    /// `db.operation.name` of an attempt of `op`: the database's own name
    /// for the request it sends (`GetItem`, `TransactWriteItems`,
    /// `SELECT`, `ExecuteSql`, …). By default quorate's
    /// ([`DbOperation::label`]).
    fn db_operation_name(&self, op: DbOperation) -> &'static str {
        op.label()
    }

    /// Where an attempt of `op` on `key` (none for probes) through `region`
    /// goes, for its span. Called only when the span is recorded.
    fn db_target(&self, op: DbOperation, region: &Region, key: Option<&str>) -> DbTarget {
        let _ = (op, region, key);
        DbTarget::new()
    }

    /// Asks a region for its clock and replica lag.
    fn probe(&self, region: &Region) -> impl Future<Output = Result<Probe, Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_versions_round_trip_and_bad_texts_are_refused() {
        let keys = ["a", "b", "c"];
        let mut text = String::new();
        push_transaction_version(&mut text, 0, Version(3));
        push_transaction_version(&mut text, 2, Version(1));
        assert_eq!(text, "0:3,2:1");
        assert_eq!(
            decode_transaction_versions(&text, &keys),
            Some(vec![
                ("a".to_owned(), Version(3)),
                ("c".to_owned(), Version(1))
            ])
        );
        assert_eq!(decode_transaction_versions("", &keys), Some(Vec::new()));
        for bad in ["0:0", "3:1", "x:1", "0:-1", "0", "0:1,"] {
            assert_eq!(decode_transaction_versions(bad, &keys), None, "{bad}");
        }
        assert_eq!(Version::from_stored(0), None);
        assert_eq!(Version::from_stored(-4), None);
        assert_eq!(Version::from_stored(7), Some(Version(7)));
    }

    #[test]
    fn generated_keys_are_valid_and_distinct_across_threads() {
        let keys: Vec<IdempotencyKey> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..1000)
                        .map(|_| IdempotencyKey::generate())
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: std::collections::HashSet<&str> = keys.iter().map(|k| k.as_str()).collect();
        assert_eq!(distinct.len(), keys.len());
        for k in &keys {
            assert_eq!(&IdempotencyKey::new(k.as_str()).unwrap(), k);
            let parts: Vec<&str> = k.as_str().split('-').collect();
            assert_eq!(parts.len(), 3, "{k}");
            assert_eq!((parts[0], parts[1].len()), ("q", 16), "{k}");
            assert!(u64::from_str_radix(parts[2], 16).is_ok(), "{k}");
        }
        let prefixes: std::collections::HashSet<&str> =
            keys.iter().map(|k| &k.as_str()[..18]).collect();
        assert_eq!(prefixes.len(), 4, "one prefix per thread");
    }
}

//! The contract an adapter implements.
//!
//! An adapter maps a resolved plan onto its database and classifies its
//! errors; everything else (policy enforcement, sessions, verification,
//! retries, routing, metrics) is written once in [`Client`](crate::Client).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Error;
use crate::policy::ReadPolicy;
use crate::record::{Committed, Mutation, Precondition, Read, ReplicaRole};
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

    /// Asks a region for its clock and replica lag.
    fn probe(&self, region: &Region) -> impl Future<Output = Result<Probe, Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

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

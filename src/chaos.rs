//! Fault injection around any [`Backend`].
//!
//! [`Chaos`] wraps a backend and, as told through its [`ChaosControl`], adds
//! latency to a region, isolates it, loses the answers of writes that did
//! commit (ambiguous commits), fails writes before they are sent, skews the
//! clocks probes report, and makes a region's followers lag by serving what
//! was committed a while ago (with honest freshness).
//!
//! ```
//! use quorate::chaos::Chaos;
//! use quorate::sim::{Sim, SimConfig};
//! use quorate::{Client, ClientConfig, Precondition, WriteOptions};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), quorate::Error> {
//! let sim = Sim::new(SimConfig::new(["eu", "us", "ap"])?)?;
//! let (backend, control) = Chaos::new(sim.at("eu")?);
//! let client = Client::new(backend, ClientConfig::default())?;
//! let session = client.session();
//!
//! control.drop_write_responses(1); // the next write commits, its answer is lost
//! let c = client
//!     .write(&session, "k", "v".into(), Precondition::IfAbsent, &WriteOptions::default())
//!     .await?; // resolved through the idempotency record: applied once
//! assert_eq!(c.version.0, 1);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{sleep, Instant};

use crate::backend::{Backend, Capabilities, IdempotencyKey, Probe, ReadPlan, WriteRequest};
use crate::error::{Error, Retryability};
use crate::record::{Committed, Freshness, Point, Read, ReplicaRole, Version, Versioned};
use crate::session::Scope;
use crate::topology::{Region, Topology};

/// A committed write the lag emulation remembers: when, its version, its
/// value (`None` for a delete) and its point.
type Remembered = (Instant, Version, Option<Bytes>, Point);

/// How many committed writes per key the lag emulation remembers.
const REMEMBERED_WRITES: usize = 32;

#[derive(Debug, Default)]
struct Faults {
    latency: HashMap<Region, Duration>,
    isolated: HashMap<Region, ()>,
    drop_write_responses: u32,
    fail_writes_before_send: u32,
    refuse_lookups: u32,
    skew: HashMap<Region, i64>,
    lag: HashMap<Region, Duration>,
    isolation_timeout: Duration,
    /// Writes seen per key: (when, version, value, point).
    writes: HashMap<String, VecDeque<Remembered>>,
    injected: u64,
}

impl Faults {
    /// Remembers a committed write of `key` (a delete without a value) for
    /// the lag emulation, unless a newer one is known.
    fn remember(&mut self, key: &str, version: Version, value: Option<&Bytes>, point: Point) {
        let log = self.writes.entry(key.to_owned()).or_default();
        if log.back().is_none_or(|(_, v, ..)| *v < version) {
            log.push_back((Instant::now(), version, value.cloned(), point));
            if log.len() > REMEMBERED_WRITES {
                log.pop_front();
            }
        }
    }
}

/// Controls the faults of one [`Chaos`] wrapper. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChaosControl {
    faults: Arc<Mutex<Faults>>,
}

impl ChaosControl {
    fn with<R>(&self, f: impl FnOnce(&mut Faults) -> R) -> R {
        f(&mut self.faults.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds `extra` latency to every request to `region` (zero removes it).
    pub fn set_latency(&self, region: &Region, extra: Duration) {
        self.with(|f| f.latency.insert(region.clone(), extra));
    }

    /// Requests to `region` hang for the isolation timeout, then fail.
    pub fn isolate(&self, region: &Region) {
        self.with(|f| f.isolated.insert(region.clone(), ()));
    }

    /// Ends the isolation of `region`.
    pub fn heal(&self, region: &Region) {
        self.with(|f| f.isolated.remove(region));
    }

    /// How long a request to an isolated region hangs (default 1 s).
    pub fn set_isolation_timeout(&self, timeout: Duration) {
        self.with(|f| f.isolation_timeout = timeout);
    }

    /// `n` more writes commit but their answers are lost: the client sees
    /// an ambiguous timeout. Counts add up: two calls of 1 lose two answers.
    pub fn drop_write_responses(&self, n: u32) {
        self.with(|f| f.drop_write_responses = f.drop_write_responses.saturating_add(n));
    }

    /// `n` more writes fail before they are sent (retryable); counts add up.
    pub fn fail_writes_before_send(&self, n: u32) {
        self.with(|f| f.fail_writes_before_send = f.fail_writes_before_send.saturating_add(n));
    }

    /// `n` more idempotency lookups are refused with a permanent error
    /// (a denied permission, a primary turned read-only) before they reach
    /// the backend: nothing is learnt of the write they would resolve.
    /// Counts add up.
    pub fn refuse_lookups(&self, n: u32) {
        self.with(|f| f.refuse_lookups = f.refuse_lookups.saturating_add(n));
    }

    /// Probes of `region` report its clock `nanos` ahead (negative: behind).
    pub fn set_clock_skew(&self, region: &Region, nanos: i64) {
        self.with(|f| f.skew.insert(region.clone(), nanos));
    }

    /// Followers in `region` serve what had committed `lag` ago — of the
    /// writes made through a wrapper sharing this control (see
    /// [`Chaos::with_control`]: wrap every client's backend with one
    /// control so that each sees the others' writes lag).
    pub fn set_replica_lag(&self, region: &Region, lag: Duration) {
        self.with(|f| f.lag.insert(region.clone(), lag));
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.with(|f| {
            f.latency.clear();
            f.isolated.clear();
            f.drop_write_responses = 0;
            f.fail_writes_before_send = 0;
            f.refuse_lookups = 0;
            f.skew.clear();
            f.lag.clear();
        });
    }

    /// How many faults have been injected so far.
    pub fn injected(&self) -> u64 {
        self.with(|f| f.injected)
    }
}

/// A [`Backend`] with injected faults.
#[derive(Clone, Debug)]
pub struct Chaos<B> {
    inner: B,
    control: ChaosControl,
}

impl<B: Backend> Chaos<B> {
    /// Wraps `inner` under an existing control: every wrapper sharing it
    /// shares its faults and the writes the lag emulation replays, as
    /// several services over one database share its faults.
    pub fn with_control(inner: B, control: &ChaosControl) -> Chaos<B> {
        Chaos {
            inner,
            control: control.clone(),
        }
    }

    /// Wraps `inner`; faults start cleared.
    pub fn new(inner: B) -> (Chaos<B>, ChaosControl) {
        let control = ChaosControl {
            faults: Arc::new(Mutex::new(Faults {
                isolation_timeout: Duration::from_secs(1),
                ..Faults::default()
            })),
        };
        (
            Chaos {
                inner,
                control: control.clone(),
            },
            control,
        )
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The fault controls.
    pub fn control(&self) -> &ChaosControl {
        &self.control
    }

    /// Waits the region's extra latency; fails after the isolation timeout
    /// when the region is isolated.
    async fn enter(&self, region: &Region) -> Result<(), Error> {
        let (latency, isolated, timeout) = self.control.with(|f| {
            let isolated = f.isolated.contains_key(region);
            if isolated {
                f.injected += 1;
            }
            (
                f.latency.get(region).copied().unwrap_or_default(),
                isolated,
                f.isolation_timeout,
            )
        });
        if isolated {
            sleep(timeout).await;
            return Err(Error::RegionUnavailable {
                region: region.clone(),
                reason: "isolated",
            });
        }
        if !latency.is_zero() {
            sleep(latency).await;
        }
        Ok(())
    }

    /// A write that fails before it is sent, when one is due.
    fn before_send(&self) -> Result<(), Error> {
        let fail = self.control.with(|f| {
            let fail = f.fail_writes_before_send > 0;
            if fail {
                f.fail_writes_before_send -= 1;
                f.injected += 1;
            }
            fail
        });
        if fail {
            return Err(Error::backend(
                Retryability::Retryable,
                Some("chaos".into()),
                "injected failure before send",
            ));
        }
        Ok(())
    }

    /// A committed write whose answer is lost, when one is due.
    fn after_commit(&self) -> Result<(), Error> {
        let drop = self.control.with(|f| {
            let drop = f.drop_write_responses > 0;
            if drop {
                f.drop_write_responses -= 1;
                f.injected += 1;
            }
            drop
        });
        if drop {
            return Err(Error::Timeout {
                after: Duration::ZERO,
                sent: true,
            });
        }
        Ok(())
    }

    /// A lookup refused, when one is due.
    fn before_lookup(&self) -> Result<(), Error> {
        let refused = self.control.with(|f| {
            let refuse = f.refuse_lookups > 0;
            if refuse {
                f.refuse_lookups -= 1;
                f.injected += 1;
            }
            refuse
        });
        if refused {
            return Err(Error::backend(
                Retryability::Permanent,
                Some("chaos".into()),
                "chaos: lookup refused",
            ));
        }
        Ok(())
    }

    fn lagged(&self, plan: &ReadPlan<'_>, read: Read<Bytes>) -> Read<Bytes> {
        if plan.role != ReplicaRole::Follower {
            return read;
        }
        self.control.with(|f| {
            let Some(lag) = f.lag.get(plan.region).copied().filter(|l| !l.is_zero()) else {
                return read;
            };
            let now = Instant::now();
            let Some(writes) = f.writes.get(plan.key) else {
                return read;
            };
            let observed = read.observed();
            // The newest write old enough to have reached the lagging replica.
            let visible = writes
                .iter()
                .rev()
                .find(|(t, ..)| now.saturating_duration_since(*t) >= lag);
            let first_is_create = writes
                .front()
                .is_some_and(|(_, v, ..)| *v == Version::FIRST);
            let (value, deleted, point) = match visible {
                Some((_, v, bytes, p)) if observed.is_none_or(|o| *v < o) => (
                    bytes.as_ref().map(|bytes| Versioned {
                        version: *v,
                        value: bytes.clone(),
                    }),
                    bytes.is_none().then_some(*v),
                    Some(*p),
                ),
                None if first_is_create && observed.is_some() => (None, None, None),
                _ => return read,
            };
            f.injected += 1;
            Read {
                value,
                deleted,
                freshness: Freshness {
                    region: read.freshness.region,
                    role: ReplicaRole::Follower,
                    point: point.or(read.freshness.point.map(|_| Point::default())),
                    staleness_bound: read.freshness.staleness_bound.map(|s| s + lag),
                },
            }
        })
    }
}

impl<B: Backend> Backend for Chaos<B> {
    fn scope(&self) -> &Scope {
        self.inner.scope()
    }

    fn topology(&self) -> &Topology {
        self.inner.topology()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn fmt_point(&self, point: crate::Point, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt_point(point, f)
    }

    fn home_region(&self, key: &str) -> Option<&Region> {
        self.inner.home_region(key)
    }

    fn db_system(&self) -> &'static str {
        self.inner.db_system()
    }

    fn db_operation_name(&self, op: crate::DbOperation) -> &'static str {
        self.inner.db_operation_name(op)
    }

    fn db_target(
        &self,
        op: crate::DbOperation,
        region: &Region,
        key: Option<&str>,
    ) -> crate::DbTarget {
        self.inner.db_target(op, region, key)
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        self.enter(plan.region).await?;
        let read = self.inner.read(plan).await?;
        Ok(self.lagged(plan, read))
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        self.before_send()?;
        self.enter(request.region).await?;
        let committed = self.inner.write(request).await?;
        self.control.with(|f| {
            f.remember(
                request.key,
                committed.version,
                request.mutation.value(),
                committed.point,
            )
        });
        self.after_commit()?;
        Ok(committed)
    }

    async fn lookup(
        &self,
        region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        self.enter(region).await?;
        self.before_lookup()?;
        self.inner.lookup(region, key, idem).await
    }

    async fn transact(
        &self,
        request: &crate::TransactRequest<'_>,
    ) -> Result<crate::Transacted, Error> {
        self.before_send()?;
        self.enter(request.region).await?;
        let done = self.inner.transact(request).await?;
        self.control.with(|f| {
            for op in request.ops {
                if let (crate::TxAction::Write(m), Some(version)) =
                    (op.action, done.version_of(op.key))
                {
                    f.remember(op.key, version, m.value(), done.point);
                }
            }
        });
        self.after_commit()?;
        Ok(done)
    }

    async fn lookup_transaction(
        &self,
        region: &Region,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<crate::Transacted>, Error> {
        self.enter(region).await?;
        self.before_lookup()?;
        self.inner.lookup_transaction(region, keys, idem).await
    }

    async fn probe(&self, region: &Region) -> Result<Probe, Error> {
        self.enter(region).await?;
        let mut probe = self.inner.probe(region).await?;
        let skew = self
            .control
            .with(|f| f.skew.get(region).copied().unwrap_or(0));
        probe.server_time_nanos = probe.server_time_nanos.saturating_add_signed(skew);
        Ok(probe)
    }
}

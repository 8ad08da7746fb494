//! An embedded multi-region database, for drills and fast tests.
//!
//! The simulator is a model, not a script: anomalies come from its
//! mechanics.
//!
//! - **Regions and links.** Each region has one node. Requests travel over
//!   links with a base latency (plus jitter and per-link extra latency); a
//!   cut link drops requests, which then time out.
//! - **Consensus mode** (CockroachDB / Spanner-like). The keyspace is one
//!   range or several (`SimConfig::ranges`), each with its own lease, log
//!   and closed timestamps; a lease is held by its preferred region while
//!   it reaches a quorum. A write is
//!   sent to any region's gateway, which assigns its hybrid-logical timestamp
//!   and forwards it to the leaseholder; the leaseholder checks the
//!   precondition and the idempotency record, places the write above its
//!   timestamp cache, and commits once a majority of regions acknowledge.
//!   Followers apply the log asynchronously, after link latency plus a
//!   replication lag, and close timestamps behind the leader.
//! - **Clocks.** Each node's clock is virtual time plus a skew. A strong read
//!   takes its timestamp from the gateway's clock; a value within
//!   `max_offset` above it is uncertain (a retryable error), and a value
//!   further above is invisible. A leaseholder cut off from the quorum
//!   keeps serving reads while its own clock says its lease is valid; a
//!   successor takes over when its clock says the lease expired. As
//!   CockroachDB does, a node more than 0.8 × `max_offset` away from more
//!   than half of the nodes it talks to stops (it serves nothing, holds no
//!   lease, counts for no quorum) until its clock is back; with
//!   `SimConfig::enforce_max_offset` off, the simulator models a database
//!   that trusts every clock, where a clock skewed beyond `max_offset`
//!   yields stale reads and two leases can overlap.
//! - **Multi-writer mode** (DynamoDB global tables, eventual). Every region
//!   accepts writes and checks preconditions against its own replica;
//!   replication is asynchronous, item by item in no order across items,
//!   with last-writer-wins by timestamp and no cross-key watermark.
//! - **Faults.** Cut links (both ways or one way), extra latency, skewed
//!   and stepped clocks, replication lag, stalled replicas, crashed and
//!   restarted nodes, paused and resumed nodes (what was sent to them
//!   waits and goes on), and lease preferences moved by an operator.
//!
//! Time is tokio's: run drills on a paused runtime and they are deterministic
//! by seed and take no wall time. A client over the simulator takes its
//! clock from its region ([`Sim::clock`] in `ClientConfig::clock`): the
//! system clock does not follow virtual time.

mod model;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{sleep, Instant};

use crate::backend::{Backend, Capabilities, IdempotencyKey, Probe, ReadPlan, WriteRequest};
use crate::clock::Clock;
use crate::error::Error;
use crate::record::{Committed, Freshness, Point, Read, ReplicaRole, Versioned};
use crate::session::Scope;
use crate::topology::{Region, Topology};
use model::{Entry, IdemRecord, Model, Outcome, Params};

/// How the simulated database replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// A leaseholder and quorum commits (CockroachDB, Spanner).
    Consensus,
    /// Every region accepts writes; asynchronous replication with
    /// last-writer-wins (DynamoDB global tables in eventual mode).
    MultiWriter,
}

/// The default [`SimConfig::jitter`]: a link's latency varies by up to a
/// tenth of it. The real-server fault layer gives its links the same.
pub const DEFAULT_JITTER: f64 = 0.1;

/// The simulated system's parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The regions, one node each.
    pub regions: Vec<Region>,
    /// Consensus or multi-writer.
    pub replication: Replication,
    /// The scope session tokens carry.
    pub scope: Scope,
    /// The home region: holds the lease (consensus) or owns writes
    /// (multi-writer).
    pub home: Region,
    /// One-way latency between two regions.
    pub link_latency: Duration,
    /// One-way latency from a client to its own region's node.
    pub local_latency: Duration,
    /// Extra delay before a follower applies what it received.
    pub replication_lag: Duration,
    /// How far behind the leader followers close timestamps.
    pub close_lag: Duration,
    /// The clock offset the database tolerates (CockroachDB `max_offset`).
    pub max_offset: Duration,
    /// Whether the database enforces it, as CockroachDB does (consensus
    /// mode): a node more than 0.8 × `max_offset` away from more than half
    /// of the nodes it talks to shuts itself down — it serves nothing,
    /// holds no lease and counts for no quorum — until its clock is back.
    /// Off, the simulator models a database that trusts every clock.
    pub enforce_max_offset: bool,
    /// Spanner's commit wait, with this clock uncertainty ε (TrueTime's),
    /// in consensus mode: the leaseholder timestamps a commit at its
    /// clock's latest possible time (now + ε) and acknowledges it only once
    /// its clock's earliest possible time (now − ε) has passed it; a strong
    /// read is timestamped at the leaseholder's latest possible time and is
    /// never uncertain. `None` (the default): CockroachDB's scheme, where
    /// the gateway timestamps and readers restart on values within
    /// `max_offset` above their timestamp.
    pub commit_wait: Option<Duration>,
    /// How many ranges the keyspace is split into, by a hash of the key
    /// (consensus mode; default 1). Each range has its own lease, log and
    /// closed timestamps, and fails over on its own; range i's lease
    /// prefers the i-th region from home on, as lease rebalancing spreads
    /// leases.
    pub ranges: usize,
    /// Multi-writer mode: each key's home region by a hash of the key
    /// (as `quorate-dynamodb`'s `Home::Hashed`), instead of `home` for
    /// every key.
    pub hashed_homes: bool,
    /// The lease's duration.
    pub lease_duration: Duration,
    /// How long a request over a cut link waits before it fails.
    pub request_timeout: Duration,
    /// Latency jitter as a fraction of the base latency.
    pub jitter: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl SimConfig {
    /// Defaults for the named regions: consensus, home in the first region,
    /// 20 ms between regions, 50 ms replication lag, 500 ms `max_offset`.
    pub fn new<'a>(regions: impl IntoIterator<Item = &'a str>) -> Result<SimConfig, Error> {
        let regions = regions
            .into_iter()
            .map(Region::new)
            .collect::<Result<Vec<_>, _>>()?;
        let home = regions
            .first()
            .cloned()
            .ok_or(crate::TopologyError::NoRegions)?;
        Ok(SimConfig {
            regions,
            replication: Replication::Consensus,
            scope: Scope::new("sim")?,
            home,
            link_latency: Duration::from_millis(20),
            local_latency: Duration::from_millis(1),
            replication_lag: Duration::from_millis(50),
            close_lag: Duration::from_millis(100),
            max_offset: Duration::from_millis(500),
            enforce_max_offset: true,
            commit_wait: None,
            ranges: 1,
            hashed_homes: false,
            lease_duration: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
            jitter: DEFAULT_JITTER,
            seed: 1,
        })
    }

    fn validate(&self) -> Result<Topology, Error> {
        let names: Vec<&str> = self.regions.iter().map(Region::as_str).collect();
        let topology = Topology::from_names(names.iter().copied(), self.home.as_str())?;
        if !(0.0..=10.0).contains(&self.jitter) || self.jitter.is_nan() {
            return Err(Error::InvalidInput("sim jitter must be in [0, 10]".into()));
        }
        if !(1..=64).contains(&self.ranges) {
            return Err(Error::InvalidInput("sim ranges must be in [1, 64]".into()));
        }
        if self.request_timeout.is_zero() || self.lease_duration.is_zero() {
            return Err(Error::InvalidInput(
                "sim request timeout and lease duration must be positive".into(),
            ));
        }
        Ok(topology)
    }
}

/// The start of simulated wall time: 2026-01-01T00:00:00Z.
pub const SIM_EPOCH_NANOS: u64 = 1_767_225_600 * 1_000_000_000;

#[derive(Debug)]
struct Shared {
    config: SimConfig,
    topology: Topology,
    model: Mutex<Model>,
    /// Notified whenever a paused node resumes, waking what waits for it
    /// (in the order it began to wait, so that a seed replays exactly).
    resumed: tokio::sync::Notify,
}

/// A handle on the simulated system as seen from one region's clients.
///
/// [`Sim::at`] gives the same system seen from another region; fault
/// injection ([`Sim::isolate`], [`Sim::set_skew`], …) acts on the whole system.
#[derive(Clone, Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    origin: usize,
    topology: Topology,
    /// This handle's clients' clock, off true time by this much; `None`:
    /// their region's node clock.
    client_skew: Option<i64>,
}

impl Sim {
    /// Builds the system. Call inside a tokio runtime (its clock is the
    /// simulation's clock).
    pub fn new(config: SimConfig) -> Result<Sim, Error> {
        let topology = config.validate()?;
        let home = topology.index_of(&config.home).unwrap_or(0);
        let params = Params {
            regions: config.regions.len(),
            multi_writer: config.replication == Replication::MultiWriter,
            home,
            link_latency: config.link_latency,
            local_latency: config.local_latency,
            replication_lag: config.replication_lag,
            close_lag: config.close_lag,
            max_offset: config.max_offset,
            enforce_max_offset: config.enforce_max_offset,
            commit_wait: config
                .commit_wait
                .filter(|_| config.replication == Replication::Consensus),
            lease_duration: config.lease_duration,
            jitter: config.jitter,
            ranges: config.ranges,
            hashed_homes: config.hashed_homes,
        };
        let model = Model::new(params, config.seed, SIM_EPOCH_NANOS);
        Ok(Sim {
            client_skew: None,
            origin: home,
            topology: topology.clone(),
            shared: Arc::new(Shared {
                config,
                topology,
                model: Mutex::new(model),
                resumed: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The same system, with clients in `region`.
    pub fn at(&self, region: &str) -> Result<Sim, Error> {
        let region = Region::new(region)?;
        let origin = self.index(&region)?;
        Ok(Sim {
            shared: self.shared.clone(),
            origin,
            topology: self.shared.topology.with_local(&region)?,
            client_skew: self.client_skew,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    fn index(&self, region: &Region) -> Result<usize, Error> {
        self.shared
            .topology
            .index_of(region)
            .ok_or_else(|| Error::Topology(crate::TopologyError::UnknownRegion(region.clone())))
    }

    fn named(&self, region: &str) -> Result<usize, Error> {
        self.index(&Region::new(region)?)
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.shared.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn region(&self, index: usize) -> Region {
        self.shared.config.regions[index].clone()
    }

    /// Cuts every link of `region`.
    pub fn isolate(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        let now = Instant::now();
        let mut m = self.model();
        for o in 0..m.p.regions {
            if o != r {
                m.links[r][o].cut_since.get_or_insert(now);
                m.links[o][r].cut_since.get_or_insert(now);
            }
        }
        m.measure_clocks();
        Ok(())
    }

    /// Cuts the link between two regions (both directions).
    pub fn cut(&self, a: &str, b: &str) -> Result<(), Error> {
        let (a, b) = (self.named(a)?, self.named(b)?);
        let now = Instant::now();
        let mut m = self.model();
        if a != b {
            m.links[a][b].cut_since.get_or_insert(now);
            m.links[b][a].cut_since.get_or_insert(now);
            m.measure_clocks();
        }
        Ok(())
    }

    /// Cuts the link from `from` to `to` only: requests one way arrive, their
    /// answers are lost (an asymmetric partition).
    pub fn cut_one_way(&self, from: &str, to: &str) -> Result<(), Error> {
        let (a, b) = (self.named(from)?, self.named(to)?);
        let now = Instant::now();
        if a != b {
            let mut m = self.model();
            m.links[a][b].cut_since.get_or_insert(now);
            m.measure_clocks();
        }
        Ok(())
    }

    /// Restores the link from `from` to `to` (one way), delivering what
    /// waited behind it; other cuts stay.
    pub fn heal_one_way(&self, from: &str, to: &str) -> Result<(), Error> {
        let (a, b) = (self.named(from)?, self.named(to)?);
        let now = Instant::now();
        let mut m = self.model();
        m.links[a][b].cut_since = None;
        m.reschedule(now);
        m.measure_clocks();
        Ok(())
    }

    /// Restores the link between two regions, both ways; other cuts stay.
    pub fn heal_link(&self, a: &str, b: &str) -> Result<(), Error> {
        self.heal_one_way(a, b)?;
        self.heal_one_way(b, a)
    }

    /// Whether the link from `from` to `to` is cut, without touching the
    /// model (observing does not perturb a run).
    pub fn link_cut(&self, from: &str, to: &str) -> Result<bool, Error> {
        let (a, b) = (self.named(from)?, self.named(to)?);
        Ok(self.model().links[a][b].cut_since.is_some())
    }

    /// Restores every link.
    pub fn heal(&self) {
        let now = Instant::now();
        let mut m = self.model();
        for row in m.links.iter_mut() {
            for l in row.iter_mut() {
                l.cut_since = None;
            }
        }
        m.reschedule(now);
        m.measure_clocks();
    }

    /// Adds one-way latency on the link between two regions (both directions).
    pub fn set_link_latency(&self, a: &str, b: &str, extra: Duration) -> Result<(), Error> {
        let (a, b) = (self.named(a)?, self.named(b)?);
        let mut m = self.model();
        m.links[a][b].extra = extra;
        m.links[b][a].extra = extra;
        Ok(())
    }

    /// Adds `extra` to the link's latency, on top of what other faults
    /// added (both directions); [`Sim::remove_link_latency`] takes it back.
    pub fn add_link_latency(&self, a: &str, b: &str, extra: Duration) -> Result<(), Error> {
        let (a, b) = (self.named(a)?, self.named(b)?);
        let mut m = self.model();
        for (x, y) in [(a, b), (b, a)] {
            m.links[x][y].extra = m.links[x][y].extra.saturating_add(extra);
        }
        Ok(())
    }

    /// Takes back latency added with [`Sim::add_link_latency`].
    pub fn remove_link_latency(&self, a: &str, b: &str, extra: Duration) -> Result<(), Error> {
        let (a, b) = (self.named(a)?, self.named(b)?);
        let mut m = self.model();
        for (x, y) in [(a, b), (b, a)] {
            m.links[x][y].extra = m.links[x][y].extra.saturating_sub(extra);
        }
        Ok(())
    }

    /// Steps a region's clock by `delta_nanos` more, on top of its present
    /// offset (other faults' steps and what it drifted stay).
    pub fn add_skew(&self, region: &str, delta_nanos: i64) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        let c = &mut m.clocks[r];
        c.skew_nanos = c.skew_nanos.saturating_add(delta_nanos);
        m.measure_clocks();
        Ok(())
    }

    /// Steps a region's clock to `skew_nanos` off true time (positive:
    /// ahead), as an operator or NTP stepping it does: what it had drifted
    /// is corrected with the step; it goes on drifting at its rate.
    pub fn set_skew(&self, region: &str, skew_nanos: i64) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        m.clocks[r].step(skew_nanos, Instant::now());
        m.measure_clocks();
        Ok(())
    }

    /// Adds `ppm` to a region's drift rate, on top of other faults'
    /// (keeping what it drifted so far); a negative `ppm` takes it back.
    pub fn add_drift(&self, region: &str, ppm: i64) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        let rate = m.clocks[r].drift_ppm.saturating_add(ppm);
        m.clocks[r].set_drift(rate, Instant::now());
        m.measure_clocks();
        Ok(())
    }

    /// How far a region's clock is from true time now, in nanoseconds
    /// (positive: ahead): its steps and what it has drifted.
    pub fn clock_offset(&self, region: &str) -> Result<i64, Error> {
        let r = self.named(region)?;
        Ok(self.model().clocks[r].offset(Instant::now()))
    }

    /// Makes a region's clock gain (positive) or lose `ppm` parts per
    /// million from now on, keeping what it drifted so far (an oscillator
    /// off its frequency with nothing correcting it; 100,000 ppm gains
    /// 100 ms a second). A node that drifts past 0.8 × `max_offset` from
    /// its peers stops when it next measures, as with a step.
    pub fn set_drift(&self, region: &str, ppm: i64) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        m.clocks[r].set_drift(ppm, Instant::now());
        m.measure_clocks();
        Ok(())
    }

    /// Sets how long `region`'s replica waits before applying what it
    /// received.
    pub fn set_replication_lag(&self, region: &str, lag: Duration) -> Result<(), Error> {
        let r = self.named(region)?;
        self.model().lag[r] = lag;
        Ok(())
    }

    /// Stops `region`'s replica applying what it receives, as a paused
    /// replay does (PostgreSQL's `pg_wal_replay_pause()`, a follower whose
    /// apply loop is stuck): it keeps receiving, and its closed point stays
    /// below what waits unapplied. Its node still serves and votes.
    pub fn stall_replica(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        // What arrived before the stall was applied (the model applies
        // lazily, when a replica is next asked).
        m.apply_due(r, Instant::now());
        m.stalled[r] = true;
        Ok(())
    }

    /// Lets a stalled replica apply again, everything that arrived first.
    pub fn resume_replica(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        self.model().stalled[r] = false;
        Ok(())
    }

    /// Adds `extra` to how late `region`'s replica applies, on top of
    /// other faults' lag; [`Sim::remove_replication_lag`] takes it back.
    pub fn add_replication_lag(&self, region: &str, extra: Duration) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        m.lag[r] = m.lag[r].saturating_add(extra);
        Ok(())
    }

    /// Takes back lag added with [`Sim::add_replication_lag`].
    pub fn remove_replication_lag(&self, region: &str, extra: Duration) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        m.lag[r] = m.lag[r].saturating_sub(extra);
        Ok(())
    }

    /// The region holding the first range's lease now (consensus mode; with
    /// one range, the lease over every key). Read-only: the lease is judged
    /// on a copy of the model, so observing it does not change when the
    /// run's own requests see the lease move.
    pub fn leaseholder(&self) -> Region {
        let mut m = self.model().clone();
        m.update_lease(0, Instant::now());
        self.region(m.ranges[0].lease.holder)
    }

    /// Leases, clocks, fences and closed points as they are now, judged on
    /// a copy of the model: looking does not change the run.
    pub fn inspect(&self) -> SimView {
        let mut m = self.model().clone();
        let now = Instant::now();
        let consensus = !m.p.multi_writer;
        let ranges = if consensus { m.ranges.len() } else { 0 };
        for range in 0..ranges {
            m.update_lease(range, now);
        }
        let nodes = (0..m.p.regions)
            .map(|node| {
                m.apply_due(node, now);
                NodeView {
                    region: self.region(node),
                    clock_offset_nanos: m.clocks[node].offset(now),
                    hlc: m.clocks[node].hlc,
                    stopped_over_clock: m.clock_fenced(node),
                    crashed: m.crashed[node].is_some(),
                    paused: m.paused[node].is_some(),
                    stalled: m.stalled[node],
                    closed: (0..ranges)
                        .map(|range| m.closed_point(node, range, now))
                        .collect(),
                }
            })
            .collect();
        let ranges = (0..ranges)
            .map(|range| {
                let r = &m.ranges[range];
                RangeView {
                    leaseholder: self.region(r.lease.holder),
                    preferred: self.region(r.preferred),
                    lease_expiry_nanos: r.lease.expiry,
                    lease_start: m.lease_start(range),
                    pending: r.pending.len(),
                }
            })
            .collect();
        SimView { nodes, ranges }
    }

    /// The region holding the lease of `key`'s range now (read-only, as
    /// [`Sim::leaseholder`]).
    pub fn leaseholder_of(&self, key: &str) -> Region {
        let mut m = self.model().clone();
        let range = m.range_of(key);
        m.update_lease(range, Instant::now());
        self.region(m.ranges[range].lease.holder)
    }

    /// Crashes `region`'s node: it serves nothing (its own region's clients
    /// go elsewhere), votes for nothing and applies nothing until
    /// [`Sim::restart`]. A leaseholder's lease runs out on its clock and
    /// another node takes over after the expiry and `max_offset`; what it
    /// had proposed without a quorum is lost. Its log is durable: what was
    /// sent to it while down is applied after the restart.
    pub fn crash(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        self.model().crash(r, Instant::now());
        Ok(())
    }

    /// Restarts a crashed node: it joins its peers' hybrid-logical clocks
    /// before serving, then catches up.
    pub fn restart(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        self.model().restart(r, Instant::now());
        Ok(())
    }

    /// Pauses `region`'s node, as a stopped process, a long garbage
    /// collection or a frozen virtual machine pauses it, until
    /// [`Sim::resume`]: it serves, votes, applies and renews nothing, like
    /// a crashed node, but it refuses no connection and loses nothing.
    /// Requests sent to it wait, unanswered, and so do the requests it
    /// was about to forward: when it resumes they go on, long after their
    /// clients gave up on them (late commits). A leaseholder's lease runs
    /// out meanwhile on the others' clocks, and what it had proposed is
    /// dropped if another node took the lease over.
    pub fn pause(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        self.model().pause(r, Instant::now());
        Ok(())
    }

    /// Resumes a paused node where it stopped.
    pub fn resume(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        if self.model().resume(r) {
            self.shared.resumed.notify_waiters();
        }
        Ok(())
    }

    /// Whether `region`'s node is paused (read-only).
    pub fn paused(&self, region: &str) -> Result<bool, Error> {
        let r = self.named(region)?;
        Ok(self.model().paused[r].is_some())
    }

    /// Whether `region`'s node is crashed (read-only).
    pub fn crashed(&self, region: &str) -> Result<bool, Error> {
        let r = self.named(region)?;
        Ok(self.model().crashed[r].is_some())
    }

    /// Moves the lease preference to `region` (consensus mode), as an
    /// operator's zone configuration does: the holder transfers the lease
    /// cooperatively as soon as both reach a quorum and each other, and a
    /// lease that expires goes there first. The new lease starts above
    /// everything the old holder could have served.
    pub fn prefer_lease(&self, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        let now = Instant::now();
        for range in 0..m.ranges.len() {
            m.ranges[range].preferred = r;
            m.update_lease(range, now);
        }
        Ok(())
    }

    /// Puts every range's lease preference back where it started (range i
    /// in the i-th region from home on), undoing [`Sim::prefer_lease`].
    pub fn default_lease_preferences(&self) {
        self.model().default_lease_preferences(Instant::now());
    }

    /// Moves the lease preference of `key`'s range only.
    pub fn prefer_lease_of(&self, key: &str, region: &str) -> Result<(), Error> {
        let r = self.named(region)?;
        let mut m = self.model();
        let range = m.range_of(key);
        m.ranges[range].preferred = r;
        m.update_lease(range, Instant::now());
        Ok(())
    }

    /// A clock reading `region`'s node clock (virtual time plus skew).
    pub fn clock(&self, region: &str) -> Result<SimClock, Error> {
        Ok(SimClock {
            shared: self.shared.clone(),
            node: self.named(region)?,
            skew: None,
        })
    }

    /// This handle with its clients on a clock of their own, `skew_nanos`
    /// off true time (positive: ahead), independent of their region's
    /// node: an application host whose clock differs from the database
    /// node's. It is the clock [`Sim::client_clock`] reads and the one an
    /// item's age is measured by on multi-writer tables (as the DynamoDB
    /// adapter measures it by the application's clock).
    pub fn with_client_clock(&self, skew_nanos: i64) -> Sim {
        Sim {
            client_skew: Some(skew_nanos),
            ..self.clone()
        }
    }

    /// The clock of this handle's clients: their own
    /// ([`Sim::with_client_clock`]) or their region's node clock. Give it to
    /// `ClientConfig::clock`.
    pub fn client_clock(&self) -> SimClock {
        SimClock {
            shared: self.shared.clone(),
            node: self.origin,
            skew: self.client_skew,
        }
    }

    /// A request leaving this handle's clients.
    fn trip(&self) -> Trip {
        Trip {
            shared: Arc::clone(&self.shared),
            origin: self.origin,
            client_skew: self.client_skew,
        }
    }
}

/// Why a node refuses a connection from another whose clock is beyond
/// `max_offset` from its own.
const REFUSED_OFFSET: &str = "remote clock offset beyond max_offset";

/// How often a proposal waiting at the leaseholder for a quorum looks again.
const PROPOSAL_POLL: Duration = Duration::from_millis(5);

/// A write attempt once it has left its client: it travels and may commit
/// whether or not the client still waits for it. One record's, or several
/// records' atomically.
struct WriteTrip {
    ops: Vec<TripOp>,
    idem: Option<IdempotencyKey>,
    /// When it left its client, in the order of every attempt's departure.
    stamp: u64,
    /// A multi-record write: its outcome is [`Outcome::Many`].
    many: bool,
    /// The name its idempotency record is bound to: the record's key, or
    /// a multi-record write's [`crate::transaction_binding`].
    binding: String,
}

/// One record of a write attempt.
struct TripOp {
    key: String,
    action: TripAction,
    precondition: crate::Precondition,
}

enum TripAction {
    Put(Bytes),
    Delete,
    Check,
}

impl WriteTrip {
    /// The record whose range (or home) coordinates the write.
    fn first_key(&self) -> &str {
        self.ops.first().map_or("", |op| op.key.as_str())
    }
}

/// A request on its way through the simulated system. It runs as a task of
/// its own: a client that stops waiting does not stop the request, which
/// may still arrive, apply and commit (a late commit), as a request on the
/// wire does.
#[derive(Clone)]
struct Trip {
    shared: Arc<Shared>,
    origin: usize,
    client_skew: Option<i64>,
}

/// Runs `trip` as a task of its own and waits for its answer; dropping the
/// returned future abandons the answer, not the request.
async fn travel<T: Send + 'static>(
    trip: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(trip).await {
        Ok(result) => result,
        Err(e) => Err(Error::backend(
            crate::Retryability::Retryable,
            None,
            format!("the simulated request did not complete: {e}"),
        )),
    }
}

impl Trip {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.shared.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn region(&self, index: usize) -> Region {
        self.shared.config.regions[index].clone()
    }

    /// A request from node `from` to node `to`: waits one latency, or the
    /// request timeout and fails when the link is cut or `from` crashed
    /// (the request is lost); fails when `to` does not serve.
    async fn hop(&self, from: usize, to: usize) -> Result<(), Error> {
        self.link(from, to, true, true).await
    }

    /// The client's request to its gateway `to`.
    async fn hop_in(&self, to: usize) -> Result<(), Error> {
        self.link(self.origin, to, false, true).await
    }

    /// The gateway's answer to the client: lost when the link is cut or the
    /// gateway crashed.
    async fn hop_out(&self, from: usize) -> Result<(), Error> {
        match self.link(from, self.origin, true, false).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Timeout {
                after: self.shared.config.request_timeout,
                sent: true,
            }),
        }
    }

    /// One message: `from_node` and `to_node` say which ends are database
    /// nodes (the other end is the client, which neither crashes nor stops
    /// over its clock).
    async fn link(
        &self,
        from: usize,
        to: usize,
        from_node: bool,
        to_node: bool,
    ) -> Result<(), Error> {
        // A paused node sends nothing until it resumes: what it was about
        // to forward waits with it.
        if from_node {
            self.while_paused(from).await;
        }
        let (reachable, latency) = {
            let mut m = self.model();
            let sender_up = !from_node || m.crashed[from].is_none();
            (sender_up && m.reachable(from, to), m.latency(from, to))
        };
        if !reachable {
            sleep(self.shared.config.request_timeout).await;
            return Err(Error::RegionUnavailable {
                region: self.region(to),
                reason: "unreachable",
            });
        }
        if !latency.is_zero() {
            sleep(latency).await;
        }
        if !to_node {
            return Ok(());
        }
        // A paused node takes what arrives only once it resumes; the
        // connection stays open meanwhile.
        self.while_paused(to).await;
        // A crashed node refuses connections; a node that stopped over its
        // clock serves nothing. Its own region's clients included.
        let mut m = self.model();
        if m.crashed[to].is_some() {
            return Err(Error::RegionUnavailable {
                region: self.region(to),
                reason: "node down",
            });
        }
        // Between nodes, a connection whose clocks are beyond `max_offset`
        // is refused: the request fails at once, retryably, and another
        // gateway may carry it.
        if from_node && !m.within_max_offset(from, to, Instant::now()) {
            return Err(Error::RegionUnavailable {
                region: self.region(to),
                reason: REFUSED_OFFSET,
            });
        }
        if m.clock_fenced(to) {
            return Err(Error::RegionUnavailable {
                region: self.region(to),
                reason: "node stopped: clock offset beyond max_offset",
            });
        }
        Ok(())
    }

    /// Waits while `node` is paused.
    async fn while_paused(&self, node: usize) {
        loop {
            let resumed = self.shared.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the check, so that a resume in between is
            // not missed.
            resumed.as_mut().enable();
            if self.model().paused[node].is_none() {
                return;
            }
            resumed.await;
        }
    }

    /// The way back: a cut link loses the answer.
    async fn hop_back(&self, from: usize, to: usize) -> Result<(), Error> {
        match self.hop(from, to).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Timeout {
                after: self.shared.config.request_timeout,
                sent: true,
            }),
        }
    }

    async fn read(
        self,
        gateway: usize,
        key: String,
        role: ReplicaRole,
    ) -> Result<Read<Bytes>, Error> {
        self.hop_in(gateway).await?;
        let multi_writer = self.shared.config.replication == Replication::MultiWriter;
        let read = if role == ReplicaRole::Leader && !multi_writer {
            self.read_leader(gateway, &key).await?
        } else {
            self.read_replica(gateway, &key, role)
        };
        self.hop_out(gateway).await?;
        Ok(read)
    }

    async fn read_leader(&self, gateway: usize, key: &str) -> Result<Read<Bytes>, Error> {
        let now = Instant::now();
        let (target, read_point, stale) = {
            let mut m = self.model();
            let range = m.range_of(key);
            m.update_lease(range, now);
            let read_point = m.hlc_now(gateway, now);
            match m.stale_holder(range, gateway, now) {
                Some(old) => (old, read_point, true),
                None => (m.ranges[range].lease.holder, read_point, false),
            }
        };
        self.hop(gateway, target).await?;
        let now = Instant::now();
        let (result, served_clock, read_point) = {
            let mut m = self.model();
            // Spanner timestamps a strong read at the leader, at TrueTime's
            // latest possible now; CockroachDB at the gateway.
            // Leases are disjoint in time: a new holder reads above
            // everything its predecessors could have committed, whatever
            // its own clock says.
            let read_point = match m.p.commit_wait {
                Some(epsilon) if !stale => {
                    let range = m.range_of(key);
                    m.tt_latest(target, now, epsilon).max(m.lease_start(range))
                }
                _ => read_point,
            };
            m.hlc_update(target, read_point, now);
            let served_clock = m.clocks[target].hlc;
            let result = if stale {
                // A deposed holder serves from its own replica.
                m.apply_due(target, now);
                Ok(m.replicas[target].latest(key).cloned())
            } else {
                m.read_log(key, read_point)
            };
            (result, served_clock, read_point)
        };
        self.hop_back(target, gateway).await?;
        self.model()
            .hlc_update(gateway, served_clock, Instant::now());
        let entry = result.map_err(|value| Error::Uncertainty {
            key: key.to_owned(),
            read: read_point,
            value,
        })?;
        let (value, deleted) = record_of(entry);
        Ok(Read {
            value,
            deleted,
            freshness: Freshness {
                region: self.region(target),
                role: ReplicaRole::Leader,
                point: Some(read_point),
                staleness_bound: Some(Duration::ZERO),
            },
        })
    }

    fn read_replica(&self, region: usize, key: &str, role: ReplicaRole) -> Read<Bytes> {
        let now = Instant::now();
        let mut m = self.model();
        m.apply_due(region, now);
        // A consensus follower measures its lag by its own clock; an item's
        // age on a multi-writer table is measured by the client's, as the
        // DynamoDB adapter does (the client's clock is its region's).
        let own = match (m.p.multi_writer, self.client_skew) {
            (true, Some(skew)) => m.true_wall(now, skew),
            (true, None) => m.wall(self.origin, now),
            (false, _) => m.wall(region, now),
        };
        let entry = m.replicas[region].latest(key).cloned();
        // A consistent read of a multi-writer table is current only in the
        // key's home region, where every write goes; elsewhere it is as
        // stale as that region's replica, and says so.
        let role = if role == ReplicaRole::Leader && region != m.home_of(key) {
            ReplicaRole::Follower
        } else {
            role
        };
        // Multi-writer tables have no cross-key watermark (global tables
        // replicate item by item, in no order across items): a read states
        // the point of the item it returns, as DynamoDB's `written_at` does,
        // and is at most as stale as that item is old; an absent item
        // states neither. A consensus follower states its closed timestamp.
        let (point, staleness) = if role == ReplicaRole::Leader {
            (entry.as_ref().map(|e| e.point), Some(Duration::ZERO))
        } else if m.p.multi_writer {
            let point = entry.as_ref().map(|e| e.point);
            (point, point.and_then(|p| age(own, p)))
        } else {
            let range = m.range_of(key);
            let closed = m.closed_point(region, range, now);
            (Some(closed), age(own, closed))
        };
        let (value, deleted) = record_of(entry);
        Read {
            value,
            deleted,
            freshness: Freshness {
                region: self.region(region),
                role,
                point,
                staleness_bound: staleness,
            },
        }
    }

    async fn write(self, gateway: usize, req: WriteTrip) -> Result<Outcome, Error> {
        // A request that never arrives may, for all the client knows, have
        // committed: report it as sent.
        self.hop_in(gateway).await.map_err(|_| Error::Timeout {
            after: self.shared.config.request_timeout,
            sent: true,
        })?;
        let committed = match self.shared.config.replication {
            Replication::Consensus => self.write_consensus(gateway, &req).await?,
            Replication::MultiWriter => self.write_multi(gateway, &req)?,
        };
        self.hop_out(gateway).await?;
        Ok(committed)
    }

    /// Waits at the leaseholder until `proposal` is first in line and a
    /// quorum is reachable, then runs `apply` under the model's lock. A
    /// proposal whose leaseholder lost the lease meanwhile never commits:
    /// `None`. Returns the quorum round trip with `apply`'s outcome.
    async fn at_leader<T>(
        &self,
        leader: usize,
        range: usize,
        apply: impl FnMut(&mut Model, Instant) -> T,
    ) -> Option<(T, Duration)> {
        self.at_leaders(leader, &[(range, leader)], apply).await
    }

    /// [`Trip::at_leader`] for a write over several ranges, coordinated by
    /// `coordinator` (the leaseholder of its first range), as a two-phase
    /// commit with write intents: the proposal takes its place in line in
    /// every range at once (so that two such writes are in the same order
    /// in every range they share), and commits once it is first in every
    /// line, every range's leaseholder (`holders`, as they were when it was
    /// proposed) still holds its lease, reaches a quorum and is reachable
    /// from the coordinator. Returns the slowest participant's round trip
    /// (the coordinator's to it and its quorum's) with `apply`'s outcome.
    async fn at_leaders<T>(
        &self,
        coordinator: usize,
        holders: &[(usize, usize)],
        mut apply: impl FnMut(&mut Model, Instant) -> T,
    ) -> Option<(T, Duration)> {
        let (proposal, epochs) = {
            let mut m = self.model();
            let p = m.proposal();
            let epochs: Vec<u64> = holders
                .iter()
                .map(|&(range, _)| {
                    m.ranges[range].pending.push_back(p);
                    m.ranges[range].epoch
                })
                .collect();
            (p, epochs)
        };
        let withdraw = |m: &mut Model| {
            for &(range, _) in holders {
                m.ranges[range].pending.retain(|q| *q != proposal);
            }
        };
        loop {
            {
                let now = Instant::now();
                let mut m = self.model();
                let mut lost = false;
                for (&(range, holder), &epoch) in holders.iter().zip(&epochs) {
                    m.update_lease(range, now);
                    lost |= m.ranges[range].epoch != epoch
                        || m.ranges[range].lease.holder != holder
                        || !m.ranges[range].pending.contains(&proposal);
                }
                if lost {
                    withdraw(&mut m);
                    return None;
                }
                let first = holders
                    .iter()
                    .all(|&(range, _)| m.ranges[range].pending.front() == Some(&proposal));
                if first {
                    let mut slowest = Some(Duration::ZERO);
                    for &(_, holder) in holders {
                        let reached = holder == coordinator
                            || (m.connected(coordinator, holder)
                                && m.within_max_offset(coordinator, holder, now));
                        let round = if reached && m.in_service(holder) {
                            m.quorum_rtt(holder).map(|q| {
                                if holder == coordinator {
                                    q
                                } else {
                                    q + m.latency(coordinator, holder)
                                        + m.latency(holder, coordinator)
                                }
                            })
                        } else {
                            None
                        };
                        slowest = slowest.zip(round).map(|(a, b)| a.max(b));
                    }
                    if let Some(rtt) = slowest {
                        for &(range, _) in holders {
                            m.ranges[range].pending.pop_front();
                        }
                        return Some((apply(&mut m, now), rtt));
                    }
                }
            }
            sleep(PROPOSAL_POLL).await;
        }
    }

    async fn write_consensus(&self, gateway: usize, req: &WriteTrip) -> Result<Outcome, Error> {
        let now = Instant::now();
        let (leader, proposed, range) = {
            let mut m = self.model();
            let range = m.range_of(req.first_key());
            m.update_lease(range, now);
            (m.ranges[range].lease.holder, m.hlc_now(gateway, now), range)
        };
        self.hop(gateway, leader).await.map_err(|e| match e {
            // Refused before it was sent: the write cannot have applied.
            e @ Error::RegionUnavailable {
                reason: REFUSED_OFFSET,
                ..
            } => e,
            _ => Error::Timeout {
                after: self.shared.config.request_timeout,
                sent: true,
            },
        })?;
        // The leaseholder of every range the write touches, the first
        // range's coordinating.
        let (still_leader, holders) = {
            let mut m = self.model();
            let now = Instant::now();
            m.update_lease(range, now);
            let mut holders = vec![(range, leader)];
            for op in &req.ops {
                let r = m.range_of(&op.key);
                if holders.iter().all(|&(h, _)| h != r) {
                    m.update_lease(r, now);
                    holders.push((r, m.ranges[r].lease.holder));
                }
            }
            (m.ranges[range].lease.holder == leader, holders)
        };
        if !still_leader {
            self.hop_back(leader, gateway).await?;
            return Err(Error::RegionUnavailable {
                region: self.region(leader),
                reason: "not leaseholder",
            });
        }
        // The proposal waits for a quorum (and for the proposals before
        // it): cut off from a majority, it stays pending and commits when
        // the quorum is back, unless the lease moved first.
        let applied = self
            .at_leaders(leader, &holders, |m, now| {
                self.apply_consensus(m, now, req, leader, gateway, proposed)
            })
            .await;
        let (outcome, rtt) = match applied {
            Some(x) => x,
            // Dropped with the lease: the client hears nothing.
            None => {
                sleep(self.shared.config.request_timeout).await;
                return Err(Error::Timeout {
                    after: self.shared.config.request_timeout,
                    sent: true,
                });
            }
        };
        let committed = match outcome {
            Ok(c) => c,
            Err(e) => {
                self.hop_back(leader, gateway).await?;
                return Err(e);
            }
        };
        // Commit wait runs alongside the quorum round: the leader answers
        // once both are over.
        let point = committed.point();
        let wait = {
            let m = self.model();
            m.p.commit_wait.map_or(Duration::ZERO, |epsilon| {
                m.commit_wait(leader, Instant::now(), point, epsilon)
            })
        };
        let rtt = rtt.max(wait);
        if !rtt.is_zero() {
            sleep(rtt).await;
        }
        self.hop_back(leader, gateway).await?;
        self.model().hlc_update(gateway, point, Instant::now());
        Ok(committed)
    }

    /// The leaseholder's decision on a write: its idempotency record, every
    /// record's precondition, then the commit of every written record at
    /// one timestamp above each one's write floor.
    fn apply_consensus(
        &self,
        m: &mut Model,
        now: Instant,
        req: &WriteTrip,
        leader: usize,
        gateway: usize,
        proposed: crate::Point,
    ) -> Result<Outcome, Error> {
        if let Some(done) = check_idem(m.idem.get_mut_or_none(req.idem.as_ref()), req)? {
            return Ok(done);
        }
        for op in &req.ops {
            let current = Entry::live(m.log_latest(&op.key));
            if !op.precondition.admits(current) {
                return Err(Error::Conflict {
                    key: op.key.clone(),
                    current,
                });
            }
        }
        let floor = req
            .ops
            .iter()
            .map(|op| m.write_floor(&op.key))
            .max()
            .unwrap_or_default();
        let point = match m.p.commit_wait {
            // Spanner: the leader timestamps at TrueTime's latest now.
            Some(epsilon) => m.tt_latest(leader, now, epsilon).max(floor),
            None => {
                m.hlc_update(leader, proposed, now);
                m.hlc_now(leader, now).max(proposed).max(floor)
            }
        };
        m.hlc_update(leader, point, now);
        let (entries, outcome) = self.next_versions(req, point, gateway, leader, |key| {
            m.log_latest(key).map(|e| e.version)
        });
        let idem = self.idem_entry(req, &outcome);
        if let Some((k, binding, outcome)) = &idem {
            m.idem.insert(
                k.clone(),
                IdemRecord::Applied {
                    key: binding.clone(),
                    outcome: outcome.clone(),
                },
            );
        }
        for (key, entry) in entries {
            // The participant holding the record's range applies it and
            // replicates it; its clock learns the commit's timestamp.
            let holder = m.ranges[m.range_of(&key)].lease.holder;
            m.hlc_update(holder, point, now);
            m.log.entry(key.clone()).or_default().push(entry.clone());
            m.replicas[holder]
                .data
                .entry(key.clone())
                .or_default()
                .push(entry.clone());
            m.replicate(holder, &key, &entry, idem.clone(), now);
        }
        Ok(outcome)
    }

    /// The entries a write creates, each on top of its record's `last`
    /// version (a tombstone's included), and its outcome.
    fn next_versions(
        &self,
        req: &WriteTrip,
        point: crate::Point,
        origin: usize,
        committer: usize,
        last: impl Fn(&str) -> Option<crate::Version>,
    ) -> (Vec<(String, Entry)>, Outcome) {
        let mut entries = Vec::with_capacity(req.ops.len());
        for op in &req.ops {
            let value = match &op.action {
                TripAction::Put(v) => Some(v.clone()),
                TripAction::Delete => None,
                TripAction::Check => continue,
            };
            let version = last(&op.key).map_or(crate::Version::FIRST, |v| v.next());
            entries.push((
                op.key.clone(),
                Entry {
                    point,
                    version,
                    value,
                    origin,
                },
            ));
        }
        let region = self.region(committer);
        let outcome = if req.many {
            Outcome::Many(crate::Transacted {
                point,
                region,
                versions: entries
                    .iter()
                    .map(|(k, e)| (k.clone(), e.version))
                    .collect(),
            })
        } else {
            Outcome::One(Committed {
                version: entries
                    .first()
                    .map_or(crate::Version::FIRST, |(_, e)| e.version),
                point,
                region,
            })
        };
        (entries, outcome)
    }

    /// The idempotency record a committed write leaves, if it has a key.
    fn idem_entry(&self, req: &WriteTrip, outcome: &Outcome) -> Option<model::IdemEntry> {
        req.idem
            .as_ref()
            .map(|k| (k.as_str().to_owned(), req.binding.clone(), outcome.clone()))
    }

    fn write_multi(&self, region: usize, req: &WriteTrip) -> Result<Outcome, Error> {
        let now = Instant::now();
        let mut m = self.model();
        m.apply_due(region, now);
        let idem = m.replicas[region].idem.get_mut_or_none(req.idem.as_ref());
        if let Some(done) = check_idem(idem, req)? {
            return Ok(done);
        }
        for op in &req.ops {
            let current = Entry::live(m.replicas[region].latest(&op.key));
            if !op.precondition.admits(current) {
                return Err(Error::Conflict {
                    key: op.key.clone(),
                    current,
                });
            }
        }
        let point = m.hlc_now(region, now);
        let (entries, outcome) = self.next_versions(req, point, region, region, |key| {
            m.replicas[region].latest(key).map(|e| e.version)
        });
        let idem = self.idem_entry(req, &outcome);
        if let Some((k, binding, outcome)) = &idem {
            m.replicas[region].idem.insert(
                k.clone(),
                IdemRecord::Applied {
                    key: binding.clone(),
                    outcome: outcome.clone(),
                },
            );
        }
        // Each item replicates on its own, as a global table's items of one
        // transaction do: another region may show some of them first.
        for (key, entry) in entries {
            m.replicas[region]
                .data
                .entry(key.clone())
                .or_default()
                .push(entry.clone());
            m.replicate(region, &key, &entry, idem.clone(), now);
        }
        Ok(outcome)
    }

    /// Looks `idem` up for the write bound to `binding` whose first record
    /// is `key`, fencing it when nothing is recorded.
    async fn lookup(
        self,
        gateway: usize,
        key: String,
        binding: String,
        idem: IdempotencyKey,
    ) -> Result<Option<Outcome>, Error> {
        self.hop_in(gateway).await?;
        let found = match self.shared.config.replication {
            Replication::MultiWriter => {
                let now = Instant::now();
                let mut m = self.model();
                m.apply_due(gateway, now);
                let before = m.stamps + 1;
                fence(&mut m.replicas[gateway].idem, &binding, &idem, before)?
            }
            Replication::Consensus => {
                let (leader, range) = {
                    let mut m = self.model();
                    let range = m.range_of(&key);
                    m.update_lease(range, Instant::now());
                    (m.ranges[range].lease.holder, range)
                };
                self.hop(gateway, leader).await?;
                // Reading the record is not enough while an attempt may
                // still arrive: the lookup commits a fence (or finds the
                // outcome) through the log, in line with the proposals
                // before it.
                let decided = self
                    .at_leader(leader, range, |m, _| {
                        let before = m.stamps + 1;
                        fence(&mut m.idem, &binding, &idem, before)
                    })
                    .await;
                let found = match decided {
                    Some((found, rtt)) => {
                        if !rtt.is_zero() {
                            sleep(rtt).await;
                        }
                        found
                    }
                    None => Err(Error::RegionUnavailable {
                        region: self.region(leader),
                        reason: "not leaseholder",
                    }),
                };
                self.hop_back(leader, gateway).await?;
                found?
            }
        };
        self.hop_out(gateway).await?;
        Ok(found)
    }

    async fn probe(self, target: usize) -> Result<(u64, Option<Duration>), Error> {
        self.hop_in(target).await?;
        let (server_time_nanos, lag) = {
            let now = Instant::now();
            let mut m = self.model();
            m.apply_due(target, now);
            let own = m.wall(target, now);
            // Without a cross-key watermark a replica cannot say how far
            // behind it is (DynamoDB reports no such figure per request).
            // The region's furthest-behind range.
            let lag = (!m.p.multi_writer).then(|| {
                let closed = (0..m.ranges.len())
                    .map(|range| m.closed_point(target, range, now))
                    .min()
                    .unwrap_or_default();
                Duration::from_nanos(own.saturating_sub(closed.wall))
            });
            (own, lag)
        };
        self.hop_out(target).await?;
        Ok((server_time_nanos, lag))
    }
}

impl Outcome {
    /// The point it committed at.
    fn point(&self) -> crate::Point {
        match self {
            Outcome::One(c) => c.point,
            Outcome::Many(t) => t.point,
        }
    }

    /// A single record's outcome; a multi-record write's under the same
    /// idempotency key is another logical write's.
    fn one(self, key: &str, idem: Option<&IdempotencyKey>) -> Result<Committed, Error> {
        match self {
            Outcome::One(c) => Ok(c),
            Outcome::Many(_) => Err(reused(key, idem)),
        }
    }

    /// A multi-record write's outcome.
    fn many(self, key: &str, idem: Option<&IdempotencyKey>) -> Result<crate::Transacted, Error> {
        match self {
            Outcome::Many(t) => Ok(t),
            Outcome::One(_) => Err(reused(key, idem)),
        }
    }
}

fn reused(key: &str, idem: Option<&IdempotencyKey>) -> Error {
    Error::IdempotencyKeyReused {
        key: key.to_owned(),
        idempotency_key: idem.cloned().unwrap_or_else(IdempotencyKey::generate),
    }
}

/// `Option<&mut V>` of an optional key, for idempotency maps.
trait GetMutOrNone {
    fn get_mut_or_none(&mut self, key: Option<&IdempotencyKey>) -> Option<&mut IdemRecord>;
}

impl GetMutOrNone for std::collections::HashMap<String, IdemRecord> {
    fn get_mut_or_none(&mut self, key: Option<&IdempotencyKey>) -> Option<&mut IdemRecord> {
        key.and_then(|k| self.get_mut(k.as_str()))
    }
}

/// What an attempt's idempotency record says: `Some` outcome to return
/// instead of applying it again; an error when the key names another
/// record or a fence stops this (earlier) attempt; `None` to apply.
fn check_idem(record: Option<&mut IdemRecord>, req: &WriteTrip) -> Result<Option<Outcome>, Error> {
    let Some(record) = record else {
        return Ok(None);
    };
    if record.key() != req.binding {
        return Err(Error::IdempotencyKeyReused {
            key: req.first_key().to_owned(),
            idempotency_key: req.idem.clone().unwrap_or_else(IdempotencyKey::generate),
        });
    }
    match record {
        IdemRecord::Applied { outcome, .. } => Ok(Some(outcome.clone())),
        IdemRecord::Fenced { before, .. } if req.stamp < *before => Err(Error::backend(
            crate::Retryability::Retryable,
            Some("fenced".into()),
            "a lookup fenced this attempt: it did not apply",
        )),
        IdemRecord::Fenced { .. } => Ok(None),
    }
}

/// How old a point is by the clock that reads `own` now; `None` when the
/// point is ahead of that clock: the clock that stamped it ran ahead by an
/// amount nothing here measures, and a bound taken from it would be short
/// by as much.
fn age(own: u64, point: Point) -> Option<Duration> {
    own.checked_sub(point.wall).map(Duration::from_nanos)
}

/// A lookup's decision at the node that orders writes: the outcome if the
/// logical write applied, else a fence that stops every attempt stamped
/// before `before` (a later fence moves it on).
fn fence(
    records: &mut std::collections::HashMap<String, IdemRecord>,
    key: &str,
    idem: &IdempotencyKey,
    before: u64,
) -> Result<Option<Outcome>, Error> {
    match records.get_mut(idem.as_str()) {
        Some(record) if record.key() != key => Err(Error::IdempotencyKeyReused {
            key: key.to_owned(),
            idempotency_key: idem.clone(),
        }),
        Some(IdemRecord::Applied { outcome, .. }) => Ok(Some(outcome.clone())),
        Some(IdemRecord::Fenced { before: b, .. }) => {
            *b = (*b).max(before);
            Ok(None)
        }
        None => {
            records.insert(
                idem.as_str().to_owned(),
                IdemRecord::Fenced {
                    key: key.to_owned(),
                    before,
                },
            );
            Ok(None)
        }
    }
}

/// A read's record and tombstone from the newest entry it sees.
fn record_of(e: Option<Entry>) -> (Option<Versioned<Bytes>>, Option<crate::Version>) {
    match e {
        Some(Entry {
            version,
            value: Some(value),
            ..
        }) => (Some(Versioned { version, value }), None),
        Some(Entry {
            version,
            value: None,
            ..
        }) => (None, Some(version)),
        None => (None, None),
    }
}

impl Backend for Sim {
    /// The simulator's records live in one table per region's node, the
    /// node named after its region.
    fn db_target(
        &self,
        op: crate::DbOperation,
        region: &Region,
        key: Option<&str>,
    ) -> crate::DbTarget {
        let target = crate::DbTarget::new()
            .namespace("quorate-sim")
            .server(region.as_str(), None);
        match (op, key) {
            (crate::DbOperation::Lookup, _) => target.collection("idempotency"),
            (_, Some(_)) => target.collection("records"),
            _ => target,
        }
    }

    fn scope(&self) -> &Scope {
        &self.shared.config.scope
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn capabilities(&self) -> Capabilities {
        let consensus = self.shared.config.replication == Replication::Consensus;
        Capabilities {
            strong_reads_anywhere: consensus,
            writes_anywhere: consensus,
            follower_reads: true,
            max_staleness: crate::policy::DEFAULT_MAX_STALENESS,
            max_clock_offset: consensus.then_some(self.shared.config.max_offset),
        }
    }

    fn home_region(&self, key: &str) -> Option<&Region> {
        if self.shared.config.replication != Replication::MultiWriter {
            return None;
        }
        if !self.shared.config.hashed_homes {
            return Some(&self.shared.config.home);
        }
        let home = model::range_index(key, self.shared.config.regions.len());
        self.shared.config.regions.get(home)
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        let gateway = self.index(plan.region)?;
        travel(self.trip().read(gateway, plan.key.to_owned(), plan.role)).await
    }

    async fn write(&self, req: &WriteRequest<'_>) -> Result<Committed, Error> {
        let gateway = self.index(req.region)?;
        let action = match req.mutation {
            crate::Mutation::Put(v) => TripAction::Put(v.clone()),
            crate::Mutation::Delete => TripAction::Delete,
        };
        let trip = WriteTrip {
            ops: vec![TripOp {
                key: req.key.to_owned(),
                action,
                precondition: req.precondition,
            }],
            idem: req.idempotency_key.cloned(),
            stamp: self.model().stamp(),
            many: false,
            binding: req.key.to_owned(),
        };
        travel(self.trip().write(gateway, trip))
            .await?
            .one(req.key, req.idempotency_key)
    }

    async fn lookup(
        &self,
        region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        let gateway = self.index(region)?;
        let trip = self
            .trip()
            .lookup(gateway, key.to_owned(), key.to_owned(), idem.clone());
        travel(trip)
            .await?
            .map(|o| o.one(key, Some(idem)))
            .transpose()
    }

    async fn transact(&self, req: &crate::TransactRequest<'_>) -> Result<crate::Transacted, Error> {
        let gateway = self.index(req.region)?;
        let ops = req
            .ops
            .iter()
            .map(|op| TripOp {
                key: op.key.to_owned(),
                action: match op.action {
                    crate::TxAction::Write(crate::Mutation::Put(v)) => TripAction::Put(v.clone()),
                    crate::TxAction::Write(crate::Mutation::Delete) => TripAction::Delete,
                    crate::TxAction::Check => TripAction::Check,
                },
                precondition: op.precondition,
            })
            .collect();
        let trip = WriteTrip {
            ops,
            idem: req.idempotency_key.cloned(),
            stamp: self.model().stamp(),
            many: true,
            binding: crate::transaction_binding(req.keys()),
        };
        let first = req.ops.first().map_or("", |op| op.key);
        travel(self.trip().write(gateway, trip))
            .await?
            .many(first, req.idempotency_key)
    }

    async fn lookup_transaction(
        &self,
        region: &Region,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<crate::Transacted>, Error> {
        let gateway = self.index(region)?;
        let first = keys.first().copied().unwrap_or("");
        let binding = crate::transaction_binding(keys.iter().copied());
        let trip = self
            .trip()
            .lookup(gateway, first.to_owned(), binding, idem.clone());
        travel(trip)
            .await?
            .map(|o| o.many(first, Some(idem)))
            .transpose()
    }

    async fn probe(&self, region: &Region) -> Result<Probe, Error> {
        let target = self.index(region)?;
        let (server_time_nanos, lag) = travel(self.trip().probe(target)).await?;
        Ok(Probe {
            region: region.clone(),
            server_time_nanos,
            replica_lag: lag,
        })
    }
}

/// What a region's node looks like at one moment (see [`Sim::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeView {
    /// The region.
    pub region: Region,
    /// How far its clock is from true time, in nanoseconds (steps and
    /// drift together; positive: ahead).
    pub clock_offset_nanos: i64,
    /// Its hybrid-logical clock (consensus mode).
    pub hlc: crate::Point,
    /// Stopped over its clock (consensus mode, when `max_offset` is
    /// enforced).
    pub stopped_over_clock: bool,
    /// Crashed.
    pub crashed: bool,
    /// Paused ([`Sim::pause`]).
    pub paused: bool,
    /// Its replica receives but does not apply.
    pub stalled: bool,
    /// Per range, the point through which its replica is complete
    /// (consensus mode; empty for multi-writer tables, which have none).
    pub closed: Vec<crate::Point>,
}

/// What a range looks like at one moment (consensus mode).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangeView {
    /// The region holding its lease.
    pub leaseholder: Region,
    /// Where its lease should be.
    pub preferred: Region,
    /// When the lease expires, on the holder's clock (nanoseconds since
    /// the Unix epoch).
    pub lease_expiry_nanos: u64,
    /// Where the current lease starts.
    pub lease_start: crate::Point,
    /// Proposals waiting at the leaseholder for a quorum.
    pub pending: usize,
}

/// A read-only picture of the simulated system (see [`Sim::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimView {
    /// Each region's node, in configuration order.
    pub nodes: Vec<NodeView>,
    /// Each range (consensus mode; empty for multi-writer tables).
    pub ranges: Vec<RangeView>,
}

/// A simulated node's clock, usable as a client's [`Clock`] so that a
/// client in a skewed region sees the skew.
#[derive(Clone, Debug)]
pub struct SimClock {
    shared: Arc<Shared>,
    node: usize,
    /// A client's own clock: true time plus this; `None`: the node's.
    skew: Option<i64>,
}

impl Clock for SimClock {
    fn now_nanos(&self) -> u64 {
        let m = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
        match self.skew {
            Some(skew) => m.true_wall(Instant::now(), skew),
            None => m.wall(self.node, Instant::now()),
        }
    }
}

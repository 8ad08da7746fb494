//! The simulator's state and mechanics: clocks, links, leases, replication.
//!
//! Everything here is synchronous and runs under the simulator's lock; the
//! asynchronous layer in `mod.rs` sleeps for network latency between steps.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::Transacted;
use crate::random::SplitMix64;
use crate::record::{Committed, Point, Version};

/// One committed version of a key.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) point: Point,
    pub(crate) version: Version,
    /// The value, or `None` for a delete's tombstone.
    pub(crate) value: Option<Bytes>,
    /// The region whose node assigned the timestamp (LWW tie-break).
    pub(crate) origin: usize,
}

/// What a logical write committed: one record's outcome, or a
/// multi-record write's.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    One(Committed),
    Many(Transacted),
}

/// An idempotency record travelling with an entry: the idempotency key,
/// the name it is bound to (the record's key, or a multi-record write's
/// binding), and the outcome.
pub(crate) type IdemEntry = (String, String, Outcome);

/// What an idempotency key names at a node.
#[derive(Clone, Debug)]
pub(crate) enum IdemRecord {
    /// The logical write applied, bound to `key`, with this outcome.
    Applied {
        /// The record the write was for (a multi-record write's binding).
        key: String,
        /// Its outcome.
        outcome: Outcome,
    },
    /// A lookup found nothing and fenced the key: attempts stamped before
    /// `before` can no longer commit; later attempts replace the fence.
    Fenced {
        /// The record the lookup was for (a multi-record write's binding).
        key: String,
        /// The first attempt stamp the fence lets through.
        before: u64,
    },
}

impl IdemRecord {
    pub(crate) fn key(&self) -> &str {
        match self {
            IdemRecord::Applied { key, .. } | IdemRecord::Fenced { key, .. } => key,
        }
    }
}

/// An entry on its way to a replica.
#[derive(Clone, Debug)]
struct Delivery {
    key: String,
    entry: Entry,
    idem: Option<IdemEntry>,
    from: usize,
    /// `None` while the link is cut.
    ready_at: Option<Instant>,
}

/// A region's copy of the data, fed by replication.
#[derive(Clone, Debug, Default)]
pub(crate) struct Replica {
    /// Versions per key, newest last.
    pub(crate) data: HashMap<String, Vec<Entry>>,
    /// Idempotency records (multi-writer mode keeps them per region).
    pub(crate) idem: HashMap<String, IdemRecord>,
    inbox: VecDeque<Delivery>,
    /// Highest point this replica is known complete through, per source.
    closed: Vec<Point>,
}

impl Replica {
    pub(crate) fn latest(&self, key: &str) -> Option<&Entry> {
        self.data.get(key).and_then(|v| v.last())
    }
}

/// A node's clock: true (virtual) time plus a skew, and its HLC.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeClock {
    /// The offset set by a step (an operator, NTP stepping the clock).
    pub(crate) skew_nanos: i64,
    /// How fast the clock gains (positive) or loses, in parts per million.
    pub(crate) drift_ppm: i64,
    /// What it gained or lost by drifting, until `drift_since`.
    pub(crate) drifted_nanos: i64,
    pub(crate) drift_since: Option<Instant>,
    pub(crate) hlc: Point,
}

impl NodeClock {
    /// The clock's offset from true time at `at`.
    pub(crate) fn offset(&self, at: Instant) -> i64 {
        let running = self.drift_since.map_or(0, |since| {
            let elapsed = at.saturating_duration_since(since).as_nanos() as i128;
            (elapsed * i128::from(self.drift_ppm) / 1_000_000) as i64
        });
        self.skew_nanos
            .saturating_add(self.drifted_nanos)
            .saturating_add(running)
    }

    /// Steps the clock to `skew_nanos` off true time: what it drifted is
    /// corrected with it; it goes on drifting at its rate.
    pub(crate) fn step(&mut self, skew_nanos: i64, at: Instant) {
        self.skew_nanos = skew_nanos;
        self.drifted_nanos = 0;
        self.drift_since = Some(at);
    }

    /// Drifts at `ppm` from `at` on, keeping what it drifted so far.
    pub(crate) fn set_drift(&mut self, ppm: i64, at: Instant) {
        self.drifted_nanos = self.offset(at) - self.skew_nanos;
        self.drift_ppm = ppm;
        self.drift_since = Some(at);
    }
}

/// One directed link between regions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Link {
    pub(crate) extra: Duration,
    pub(crate) cut_since: Option<Instant>,
}

/// The lease over the keyspace in consensus mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) holder: usize,
    /// Expiry on the holder's clock (wall nanos); renewed while the holder
    /// reaches a quorum.
    pub(crate) expiry: u64,
}

/// The parameters the model needs (copied from `SimConfig`).
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) regions: usize,
    pub(crate) multi_writer: bool,
    pub(crate) home: usize,
    pub(crate) link_latency: Duration,
    pub(crate) local_latency: Duration,
    pub(crate) replication_lag: Duration,
    pub(crate) close_lag: Duration,
    pub(crate) max_offset: Duration,
    pub(crate) enforce_max_offset: bool,
    pub(crate) commit_wait: Option<Duration>,
    pub(crate) lease_duration: Duration,
    pub(crate) jitter: f64,
    /// How many ranges the keyspace is split into (consensus mode).
    pub(crate) ranges: usize,
    /// Multi-writer mode: homes by key hash.
    pub(crate) hashed_homes: bool,
}

/// One range of the keyspace (consensus mode): its lease, and the
/// proposals waiting at its leaseholder. Ranges move and fail over
/// independently, as CockroachDB's do.
#[derive(Clone, Debug)]
pub(crate) struct Range {
    pub(crate) lease: Lease,
    /// The holder before the last transfer, while it may still believe in
    /// its lease.
    pub(crate) previous: Option<Lease>,
    /// The current lease's start; no write commits at or below it.
    lease_start: Point,
    /// Proposals waiting at the leaseholder for a quorum, in arrival
    /// order; they commit in that order once a quorum is back, and are
    /// dropped when the lease moves.
    pub(crate) pending: VecDeque<u64>,
    /// Bumped at every lease transfer: a proposal made under an older lease
    /// never commits.
    pub(crate) epoch: u64,
    /// Where the lease should be (CockroachDB's lease preference).
    pub(crate) preferred: usize,
}

/// The whole simulated system.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub(crate) p: Params,
    start: Instant,
    epoch_nanos: u64,
    pub(crate) clocks: Vec<NodeClock>,
    pub(crate) links: Vec<Vec<Link>>,
    pub(crate) lag: Vec<Duration>,
    pub(crate) replicas: Vec<Replica>,
    /// Consensus mode: the committed log (what the leaseholder serves).
    pub(crate) log: HashMap<String, Vec<Entry>>,
    /// Consensus mode: idempotency records, committed with their entry.
    pub(crate) idem: HashMap<String, IdemRecord>,
    /// The last proposal number handed out.
    pub(crate) proposals: u64,
    /// The last attempt stamp handed out (every write attempt gets one when
    /// it leaves its client; fences compare against them).
    pub(crate) stamps: u64,
    /// Nodes stopped over their clocks (see [`Model::clock_fenced`]).
    fenced: Vec<bool>,
    /// Replicas that receive but do not apply (a paused replay): what
    /// arrives waits in their inbox, which caps their closed point.
    pub(crate) stalled: Vec<bool>,
    /// Nodes crashed, since when: they serve, vote and apply nothing, and
    /// what is sent to them waits for their restart (their Raft log is
    /// durable; a peer sends again what they missed).
    pub(crate) crashed: Vec<Option<Instant>>,
    /// Nodes paused, since when (a stopped process, a long garbage
    /// collection, a frozen virtual machine): like a crashed node they
    /// serve, vote, apply and renew nothing, but nothing is lost and no
    /// connection is refused — what is sent to them, and what they were
    /// about to send, waits and goes on when they resume.
    pub(crate) paused: Vec<Option<Instant>>,
    /// Consensus mode: highest read timestamp served per key.
    tscache: HashMap<String, Point>,
    /// Consensus mode: the ranges, each with its lease.
    pub(crate) ranges: Vec<Range>,
    pub(crate) rng: SplitMix64,
}

impl Model {
    pub(crate) fn new(p: Params, seed: u64, epoch_nanos: u64) -> Model {
        let n = p.regions;
        let start = Instant::now();
        let mut m = Model {
            start,
            epoch_nanos,
            clocks: vec![NodeClock::default(); n],
            links: vec![vec![Link::default(); n]; n],
            lag: vec![p.replication_lag; n],
            replicas: (0..n)
                .map(|_| Replica {
                    closed: vec![Point::default(); n * p.ranges.max(1)],
                    ..Replica::default()
                })
                .collect(),
            log: HashMap::new(),
            idem: HashMap::new(),
            proposals: 0,
            stamps: 0,
            fenced: vec![false; n],
            stalled: vec![false; n],
            crashed: vec![None; n],
            paused: vec![None; n],
            tscache: HashMap::new(),
            // Leases spread over the regions from home on, as lease
            // rebalancing spreads them.
            ranges: (0..p.ranges.max(1))
                .map(|i| {
                    let holder = (p.home + i) % n.max(1);
                    Range {
                        lease: Lease { holder, expiry: 0 },
                        previous: None,
                        lease_start: Point::default(),
                        pending: VecDeque::new(),
                        epoch: 0,
                        preferred: holder,
                    }
                })
                .collect(),
            rng: SplitMix64::new(seed),
            p,
        };
        for r in 0..m.ranges.len() {
            let holder = m.ranges[r].lease.holder;
            m.ranges[r].lease.expiry = m.wall(holder, start) + nanos(m.p.lease_duration);
        }
        m
    }

    /// Every range's lease preference back to where it started: range i in
    /// the i-th region from home on.
    pub(crate) fn default_lease_preferences(&mut self, now: Instant) {
        let n = self.p.regions.max(1);
        for i in 0..self.ranges.len() {
            self.ranges[i].preferred = (self.p.home + i) % n;
            self.update_lease(i, now);
        }
    }

    /// The range holding `key`: by a hash of the key (one range: all).
    pub(crate) fn range_of(&self, key: &str) -> usize {
        range_index(key, self.ranges.len())
    }

    /// The home region of `key` (multi-writer mode).
    pub(crate) fn home_of(&self, key: &str) -> usize {
        if self.p.hashed_homes {
            range_index(key, self.p.regions)
        } else {
            self.p.home
        }
    }

    /// True time at `at` plus `skew_nanos` (a clock that is no node's).
    pub(crate) fn true_wall(&self, at: Instant, skew_nanos: i64) -> u64 {
        let t = self.epoch_nanos as i128
            + (at - self.start).as_nanos() as i128
            + i128::from(skew_nanos);
        t.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A node's physical clock at true time `at`.
    pub(crate) fn wall(&self, node: usize, at: Instant) -> u64 {
        let t = self.epoch_nanos as i128
            + (at - self.start).as_nanos() as i128
            + i128::from(self.clocks[node].offset(at));
        t.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A local HLC event on `node`.
    pub(crate) fn hlc_now(&mut self, node: usize, now: Instant) -> Point {
        let phys = self.wall(node, now);
        let c = &mut self.clocks[node];
        c.hlc = if phys > c.hlc.wall {
            Point::hlc(phys, 0)
        } else {
            c.hlc.successor()
        };
        c.hlc
    }

    /// `node` receives a message carrying `remote`.
    pub(crate) fn hlc_update(&mut self, node: usize, remote: Point, now: Instant) {
        let phys = Point::hlc(self.wall(node, now), 0);
        let c = &mut self.clocks[node];
        c.hlc = c.hlc.max(remote).max(phys);
    }

    /// Whether a message from `from` reaches `to` (links may be cut one
    /// way only: a request arrives, its answer is lost).
    pub(crate) fn reachable(&self, from: usize, to: usize) -> bool {
        from == to || self.links[from][to].cut_since.is_none()
    }

    /// Whether messages pass both ways (a round trip).
    pub(crate) fn connected(&self, a: usize, b: usize) -> bool {
        self.reachable(a, b) && self.reachable(b, a)
    }

    /// Whether `node` has shut itself down over its clock (consensus mode,
    /// when enforced): CockroachDB measures its offset to every node it
    /// talks to and stops a node whose clock is more than 0.8 × `max_offset`
    /// away from more than half of them. A stopped node stays stopped until
    /// it measures its clock back within bounds (an operator restarts it);
    /// a node that talks to nobody measures nothing and stays as it was.
    ///
    /// A restarted node joins the cluster before it serves: its first
    /// requests (its liveness heartbeat, the system ranges it reads) are
    /// answered by leaseholders whose answers carry their hybrid-logical
    /// clocks, so its own starts above every peer it reaches — above the
    /// timestamps written while its clock was out, however far ahead the
    /// others ran.
    pub(crate) fn clock_fenced(&mut self, node: usize) -> bool {
        if self.p.multi_writer || !self.p.enforce_max_offset {
            return false;
        }
        if self.down_since(node).is_some() {
            return self.fenced[node];
        }
        let limit = (nanos(self.p.max_offset) as f64 * 0.8) as u64;
        let now = Instant::now();
        let own = self.clocks[node].offset(now);
        let (mut out, mut peers) = (0, 0);
        for other in (0..self.p.regions).filter(|&o| o != node && self.talks_to(node, o)) {
            peers += 1;
            if own.abs_diff(self.clocks[other].offset(now)) > limit {
                out += 1;
            }
        }
        if peers > 0 {
            let fenced = out * 2 > peers;
            if self.fenced[node] && !fenced {
                self.join_peers(node);
            }
            self.fenced[node] = fenced;
        }
        self.fenced[node]
    }

    /// Whether `a` and `b` exchange messages both ways and both are up.
    pub(crate) fn talks_to(&self, a: usize, b: usize) -> bool {
        self.down_since(a).is_none() && self.down_since(b).is_none() && self.connected(a, b)
    }

    /// Whether two nodes' clocks are close enough for their RPC connection
    /// (consensus mode, when enforced): CockroachDB refuses a connection
    /// whose heartbeat measures the remote clock beyond `max_offset`, and
    /// the requests and Raft messages it would carry with it.
    pub(crate) fn within_max_offset(&self, a: usize, b: usize, now: Instant) -> bool {
        if a == b || self.p.multi_writer || !self.p.enforce_max_offset {
            return true;
        }
        let d = self.clocks[a]
            .offset(now)
            .abs_diff(self.clocks[b].offset(now));
        d <= nanos(self.p.max_offset)
    }

    /// Whether `node` serves: neither crashed, paused nor stopped over its
    /// clock.
    pub(crate) fn in_service(&mut self, node: usize) -> bool {
        self.down_since(node).is_none() && !self.clock_fenced(node)
    }

    /// Since when `node` has been crashed or paused (the earlier of the
    /// two), if it is.
    pub(crate) fn down_since(&self, node: usize) -> Option<Instant> {
        match (self.crashed[node], self.paused[node]) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pauses `node`: it stops at once, losing nothing. What its replica
    /// had received by then is applied (the model applies lazily).
    pub(crate) fn pause(&mut self, node: usize, now: Instant) {
        if self.paused[node].is_some() {
            return;
        }
        self.apply_due(node, now);
        self.paused[node] = Some(now);
        self.measure_clocks();
    }

    /// Resumes a paused node where it stopped: its clock ran on meanwhile
    /// (it is the operating system's), its hybrid-logical clock did not
    /// move, and what waited for it goes on.
    pub(crate) fn resume(&mut self, node: usize) -> bool {
        if self.paused[node].take().is_none() {
            return false;
        }
        self.measure_clocks();
        true
    }

    /// A node coming back into service joins the cluster before it serves:
    /// its first requests (its liveness heartbeat, the system ranges it
    /// reads) are answered by leaseholders whose answers carry their
    /// hybrid-logical clocks, so its own starts above every serving peer it
    /// reaches.
    fn join_peers(&mut self, node: usize) {
        let joined = (0..self.p.regions)
            .filter(|&o| o != node && !self.fenced[o] && self.talks_to(node, o))
            .map(|o| self.clocks[o].hlc)
            .max()
            .unwrap_or_default();
        let c = &mut self.clocks[node];
        c.hlc = c.hlc.max(joined);
    }

    /// Crashes `node`: it stops at once. What its leaseholder proposed and
    /// had not committed is lost with it.
    pub(crate) fn crash(&mut self, node: usize, now: Instant) {
        if self.crashed[node].is_some() {
            return;
        }
        // What arrived before the crash was applied (the model applies
        // lazily, when a replica is next asked).
        self.apply_due(node, now);
        self.crashed[node] = Some(now);
        if !self.p.multi_writer {
            for range in self.ranges.iter_mut().filter(|r| r.lease.holder == node) {
                range.pending.clear();
            }
        }
        self.measure_clocks();
    }

    /// Restarts a crashed node: it joins its peers' clocks, then applies
    /// what was sent to it meanwhile.
    pub(crate) fn restart(&mut self, node: usize, now: Instant) {
        if self.crashed[node].take().is_none() {
            return;
        }
        // A CockroachDB node's first requests carry its peers' HLCs; a
        // global table's region has no such clock to join.
        if !self.p.multi_writer {
            self.join_peers(node);
        }
        self.reschedule(now);
        self.measure_clocks();
    }

    /// Every node measures its clock against the peers it reaches, as it
    /// does continuously: called whenever a clock or a link changes, so
    /// that a fence is decided when the offset appears, not when the node
    /// is next asked for something.
    pub(crate) fn measure_clocks(&mut self) {
        for node in 0..self.p.regions {
            self.clock_fenced(node);
        }
    }

    /// One-way latency from `from` to `to`, with jitter.
    pub(crate) fn latency(&mut self, from: usize, to: usize) -> Duration {
        let base = if from == to {
            self.p.local_latency
        } else {
            self.p.link_latency + self.links[from][to].extra
        };
        if base.is_zero() || self.p.jitter == 0.0 {
            return base;
        }
        base.mul_f64(1.0 + self.p.jitter * self.rng.unit())
    }

    fn base_latency(&self, from: usize, to: usize) -> Duration {
        if from == to {
            self.p.local_latency
        } else {
            self.p.link_latency + self.links[from][to].extra
        }
    }

    /// The round trip to the slowest member of the fastest quorum that
    /// includes `leader`, or `None` when no quorum is reachable.
    pub(crate) fn quorum_rtt(&mut self, leader: usize) -> Option<Duration> {
        let n = self.p.regions;
        let needed = n / 2; // followers needed besides the leader
        let now = Instant::now();
        let followers: Vec<usize> = (0..n)
            .filter(|&r| {
                r != leader && self.connected(leader, r) && self.within_max_offset(leader, r, now)
            })
            .collect();
        let mut rtts: Vec<Duration> = Vec::with_capacity(followers.len());
        for r in followers {
            // A node stopped over its clock acknowledges nothing.
            if self.in_service(r) {
                rtts.push(self.base_latency(leader, r) + self.base_latency(r, leader));
            }
        }
        if rtts.len() < needed {
            return None;
        }
        rtts.sort();
        let rtt = if needed == 0 {
            Duration::ZERO
        } else {
            rtts[needed - 1]
        };
        if rtt.is_zero() || self.p.jitter == 0.0 {
            return Some(rtt);
        }
        Some(rtt.mul_f64(1.0 + self.p.jitter * self.rng.unit()))
    }

    /// Renews or moves the lease (consensus mode).
    ///
    /// The holder renews while it reaches a quorum. Another region that
    /// reaches a quorum takes the lease once its own clock says the old lease
    /// expired (plus `max_offset`); the home region takes it back as soon as
    /// it reaches a quorum again. The old holder keeps serving reads while
    /// its own clock says its lease is valid: with clocks skewed beyond
    /// `max_offset` the two overlap.
    pub(crate) fn update_lease(&mut self, range: usize, now: Instant) {
        if self.p.multi_writer {
            return;
        }
        let holder = self.ranges[range].lease.holder;
        // A node stopped over its clock neither holds nor takes a lease.
        let quorum = |m: &mut Model, r: usize| m.in_service(r) && m.quorum_rtt(r).is_some();
        let preferred = self.ranges[range].preferred;
        if quorum(self, holder) {
            self.ranges[range].lease.expiry = self.wall(holder, now) + nanos(self.p.lease_duration);
            if holder != preferred
                && quorum(self, preferred)
                && self.connected(holder, preferred)
                && self.within_max_offset(holder, preferred, now)
            {
                self.transfer(range, preferred, now, true);
            }
            return;
        }
        // The holder renewed its lease continuously until it lost its quorum.
        if let Some(lost) = self.quorum_lost_at(holder) {
            let renewed = self.wall(holder, lost) + nanos(self.p.lease_duration);
            let lease = &mut self.ranges[range].lease;
            lease.expiry = lease.expiry.max(renewed);
        }
        let candidates = std::iter::once(preferred).chain(0..self.p.regions);
        for r in candidates.collect::<Vec<_>>() {
            if r != holder
                && quorum(self, r)
                && self.wall(r, now) > self.ranges[range].lease.expiry + nanos(self.p.max_offset)
            {
                self.transfer(range, r, now, false);
                return;
            }
        }
    }

    /// When `holder` lost its quorum: the cut that left it with fewer
    /// reachable followers than a majority needs.
    fn quorum_lost_at(&self, holder: usize) -> Option<Instant> {
        let earliest = |times: &[Option<Instant>]| times.iter().flatten().min().copied();
        if let Some(down) = self.down_since(holder) {
            return Some(down);
        }
        let mut cuts: Vec<Instant> = (0..self.p.regions)
            .filter(|&r| r != holder)
            .filter_map(|r| {
                earliest(&[
                    self.links[holder][r].cut_since,
                    self.links[r][holder].cut_since,
                    self.down_since(r),
                ])
            })
            .collect();
        cuts.sort();
        let followers = self.p.regions - 1;
        let spare = followers.checked_sub(self.p.regions / 2)?;
        cuts.get(spare).copied()
    }

    fn transfer(&mut self, range: usize, to: usize, now: Instant, cooperative: bool) {
        let old = self.ranges[range].lease;
        // What the old holder had proposed without a quorum is lost: the
        // new leaseholder's log does not have it.
        let r = &mut self.ranges[range];
        r.pending.clear();
        r.epoch += 1;
        r.previous = (!cooperative).then_some(old);
        // The new lease starts above everything the old one could have
        // served, as CockroachDB's does: a cooperative transfer at the old
        // holder's clock (it stops serving then), an expiration-based one at
        // the old lease's expiry (which the new holder's clock has passed by
        // `max_offset` before it may take over). The start is a floor for
        // writes — the new holder's timestamp cache — not a jump of its
        // clock: later commits stay at the present.
        let start = if cooperative {
            let c = &self.clocks[old.holder];
            c.hlc.max(Point::hlc(self.wall(old.holder, now), 0))
        } else {
            Point::hlc(old.expiry, 0)
        };
        let expiry = self.wall(to, now) + nanos(self.p.lease_duration);
        let r = &mut self.ranges[range];
        r.lease_start = r.lease_start.max(start);
        r.lease = Lease { holder: to, expiry };
    }

    /// Whether a deposed holder still serves reads by its own clock, and is
    /// reachable from `gateway`.
    pub(crate) fn stale_holder(
        &mut self,
        range: usize,
        gateway: usize,
        now: Instant,
    ) -> Option<usize> {
        let prev = self.ranges[range].previous?;
        (prev.holder != self.ranges[range].lease.holder
            && self.connected(gateway, prev.holder)
            && self.in_service(prev.holder)
            && self.wall(prev.holder, now) < prev.expiry)
            .then_some(prev.holder)
    }

    /// Delivers everything due at `region`.
    pub(crate) fn apply_due(&mut self, region: usize, now: Instant) {
        if self.stalled[region] || self.down_since(region).is_some() {
            return;
        }
        let multi_writer = self.p.multi_writer;
        let (ranges, n) = (self.ranges.len(), self.p.regions);
        let replica = &mut self.replicas[region];
        // Multi-writer tables replicate item by item, each on its own
        // schedule: whatever has arrived applies, in arrival order, past
        // anything still on its way. One log arrives in order.
        let due: Vec<Delivery> = if multi_writer {
            let mut due = Vec::new();
            let mut waiting = VecDeque::with_capacity(replica.inbox.len());
            for d in replica.inbox.drain(..) {
                if d.ready_at.is_some_and(|t| t <= now) {
                    due.push(d);
                } else {
                    waiting.push_back(d);
                }
            }
            replica.inbox = waiting;
            due.sort_by_key(|d| d.ready_at);
            due
        } else {
            // Each range's log arrives in order: an entry applies once it
            // has arrived and nothing of its range before it waits.
            // The scan stops once every range waits, so with nothing due it
            // looks at one entry per range, not the whole inbox.
            let mut due = Vec::new();
            let mut blocked = vec![false; ranges];
            let mut waiting_ranges = 0;
            let mut i = 0;
            while i < replica.inbox.len() && waiting_ranges < ranges {
                let d = &replica.inbox[i];
                let r = range_index(&d.key, ranges);
                if !blocked[r] && d.ready_at.is_some_and(|t| t <= now) {
                    due.extend(replica.inbox.remove(i));
                } else {
                    if !blocked[r] {
                        blocked[r] = true;
                        waiting_ranges += 1;
                    }
                    i += 1;
                }
            }
            due
        };
        for d in due {
            let versions = replica.data.entry(d.key.clone()).or_default();
            if multi_writer {
                // Last writer wins, by timestamp then region.
                let newer = versions
                    .last()
                    .is_none_or(|last| (d.entry.point, d.entry.origin) > (last.point, last.origin));
                if newer {
                    versions.push(d.entry.clone());
                }
            } else {
                // One log: an entry takes its place in version order, however
                // late it arrives (an old leaseholder's entry held behind a
                // cut comes after the new leaseholder's), and once.
                let at = versions.partition_point(|e| e.version < d.entry.version);
                if versions
                    .get(at)
                    .is_none_or(|e| e.version != d.entry.version)
                {
                    versions.insert(at, d.entry.clone());
                }
            }
            if let Some((k, binding, outcome)) = d.idem {
                let record = IdemRecord::Applied {
                    key: binding,
                    outcome,
                };
                match replica.idem.get(&k) {
                    Some(IdemRecord::Applied { .. }) => {}
                    _ => {
                        replica.idem.insert(k, record);
                    }
                }
            }
            let closed = &mut replica.closed[range_index(&d.key, ranges) * n + d.from];
            *closed = (*closed).max(d.entry.point);
        }
    }

    /// Queues `entry` for every other region, as sent by `from` now.
    pub(crate) fn replicate(
        &mut self,
        from: usize,
        key: &str,
        entry: &Entry,
        idem: Option<IdemEntry>,
        now: Instant,
    ) {
        for r in 0..self.p.regions {
            if r == from {
                continue;
            }
            let ready_at = if self.reachable(from, r) {
                Some(now + self.delivery_delay(from, r))
            } else {
                None
            };
            let range = self.range_of(key);
            let previous = self.replicas[r]
                .inbox
                .iter()
                .rev()
                .find(|d| self.range_of(&d.key) == range)
                .map(|d| d.ready_at);
            let ready_at = match (ready_at, previous) {
                // Items of a multi-writer table travel independently; a
                // range's log, in order behind its own earlier entries.
                (t, _) if self.p.multi_writer => t,
                (Some(t), Some(Some(prev))) => Some(t.max(prev)),
                (Some(_), Some(None)) => None,
                (t, _) => t,
            };
            self.replicas[r].inbox.push_back(Delivery {
                key: key.to_owned(),
                entry: entry.clone(),
                idem: idem.clone(),
                from,
                ready_at,
            });
        }
    }

    /// How long an entry sent now from `from` takes to apply at `to`: the
    /// link's latency and the replica's lag; in multi-writer mode each item
    /// also waits a random share of that lag, so that items overtake one
    /// another (global tables replicate item by item, in no order across
    /// items).
    fn delivery_delay(&mut self, from: usize, to: usize) -> Duration {
        let base = self.base_latency(from, to) + self.lag[to];
        if self.p.multi_writer {
            base + self.lag[to].mul_f64(self.rng.unit())
        } else {
            base
        }
    }

    /// After a link heals: schedule what waited behind it.
    pub(crate) fn reschedule(&mut self, now: Instant) {
        let ranges = self.ranges.len();
        for r in 0..self.p.regions {
            let mut prev: Vec<Option<Instant>> = vec![None; ranges];
            let mut blocked = vec![false; ranges];
            for i in 0..self.replicas[r].inbox.len() {
                let (from, ready, range) = {
                    let d = &self.replicas[r].inbox[i];
                    (d.from, d.ready_at, range_index(&d.key, ranges))
                };
                if !self.p.multi_writer && blocked[range] {
                    continue;
                }
                let ready = match ready {
                    Some(t) => Some(t),
                    None if self.reachable(from, r) => Some(now + self.delivery_delay(from, r)),
                    None => None,
                };
                if self.p.multi_writer {
                    self.replicas[r].inbox[i].ready_at = ready;
                    continue;
                }
                let ready = match (ready, prev[range]) {
                    (Some(t), Some(p)) => Some(t.max(p)),
                    (t, _) => t,
                };
                self.replicas[r].inbox[i].ready_at = ready;
                match ready {
                    Some(t) => prev[range] = Some(t),
                    None => blocked[range] = true,
                }
            }
        }
    }

    /// The point through which `region`'s replica is complete (consensus
    /// mode: multi-writer tables have no such watermark): what the
    /// leaseholder has sent that has had time to arrive, capped below
    /// anything still queued.
    pub(crate) fn closed_point(&mut self, region: usize, range: usize, now: Instant) -> Point {
        // Consensus mode has one log: a replica is complete only through
        // the entries it has applied, whichever holder sent those still on
        // their way (a closed timestamp is valid only up to the replica's
        // applied position, as in CockroachDB). Without this, a new
        // leaseholder's closed timestamps would cover entries of the old
        // one still stuck behind a cut.
        // Each range has its own log and closed timestamps: only its own
        // entries still on their way hold its closed point back.
        let applied_through = self.replicas[region]
            .inbox
            .iter()
            .filter(|d| self.range_of(&d.key) == range)
            .map(|d| d.entry.point)
            .min()
            .map(predecessor);
        let cap = |p: Point| applied_through.map_or(p, |a| p.min(a));
        let holder = self.ranges[range].lease.holder;
        let sources: Vec<usize> = if holder == region {
            // The leaseholder is complete through now, once it has applied
            // what it was sent.
            return cap(self.clocks[region]
                .hlc
                .max(Point::hlc(self.wall(region, now), 0)));
        } else {
            vec![holder]
        };
        let n = self.p.regions;
        let mut closed: Option<Point> = None;
        for s in sources {
            let link = self.links[s][region]
                .cut_since
                .or(self.links[region][s].cut_since);
            let heard = link.map_or(now, |cut| cut.min(now));
            let delay = self.base_latency(s, region) + self.lag[region] + self.p.close_lag;
            let sent = heard
                .checked_sub(delay)
                .unwrap_or(self.start)
                .max(self.start);
            let mut from_source = Point::hlc(self.wall(s, sent), 0);
            if let Some(d) = self.replicas[region]
                .inbox
                .iter()
                .find(|d| d.from == s && self.range_of(&d.key) == range)
            {
                from_source = from_source.min(Point::hlc(d.entry.point.wall.saturating_sub(1), 0));
            }
            let kept = &mut self.replicas[region].closed[range * n + s];
            *kept = (*kept).max(from_source);
            closed = Some(closed.map_or(*kept, |c: Point| c.min(*kept)));
        }
        cap(closed.unwrap_or(self.clocks[region].hlc))
    }

    /// The committed log entry visible to a read at `read` (consensus mode),
    /// or the uncertain entry that makes the read ambiguous.
    pub(crate) fn read_log(&mut self, key: &str, read: Point) -> Result<Option<Entry>, Point> {
        // With commit wait nothing is uncertain: every write acknowledged
        // before the read began is below its timestamp (as long as clocks
        // keep within ε).
        let limit = match self.p.commit_wait {
            Some(_) => read,
            None => Point::hlc(read.wall.saturating_add(nanos(self.p.max_offset)), u32::MAX),
        };
        let cache = self.tscache.entry(key.to_owned()).or_default();
        *cache = (*cache).max(read);
        let Some(versions) = self.log.get(key) else {
            return Ok(None);
        };
        if let Some(uncertain) = versions
            .iter()
            .rev()
            .find(|e| e.point > read && e.point <= limit)
        {
            return Err(uncertain.point);
        }
        Ok(versions.iter().rev().find(|e| e.point <= read).cloned())
    }

    /// Where `range`'s current lease starts: everything its earlier holders
    /// could have committed or served is at or below it.
    pub(crate) fn lease_start(&self, range: usize) -> Point {
        self.ranges[range].lease_start
    }

    /// TrueTime's latest possible now on `node`: its clock plus ε, kept
    /// above its hybrid-logical clock (commit-wait mode).
    pub(crate) fn tt_latest(&mut self, node: usize, now: Instant, epsilon: Duration) -> Point {
        let latest = Point::hlc(self.wall(node, now).saturating_add(nanos(epsilon)), 0);
        let at = self.hlc_now(node, now).max(latest);
        self.hlc_update(node, at, now);
        at
    }

    /// How long `node` must still wait, from `now`, before its clock's
    /// earliest possible time passes `point` (Spanner's commit wait).
    pub(crate) fn commit_wait(
        &self,
        node: usize,
        now: Instant,
        point: Point,
        epsilon: Duration,
    ) -> Duration {
        let earliest = self.wall(node, now).saturating_sub(nanos(epsilon));
        Duration::from_nanos((point.wall + 1).saturating_sub(earliest))
    }

    /// The lowest timestamp a new write of `key` may take at the leaseholder.
    pub(crate) fn write_floor(&self, key: &str) -> Point {
        let cache = self.tscache.get(key).copied().unwrap_or_default();
        let last = self
            .log
            .get(key)
            .and_then(|v| v.last())
            .map(|e| e.point)
            .unwrap_or_default();
        let range = &self.ranges[self.range_of(key)];
        cache.max(last).max(range.lease_start).successor()
    }

    pub(crate) fn log_latest(&self, key: &str) -> Option<&Entry> {
        self.log.get(key).and_then(|v| v.last())
    }
}

impl Entry {
    /// The version a precondition sees: the record's, `None` when the
    /// newest entry is a delete's tombstone (a deleted record is absent).
    pub(crate) fn live(entry: Option<&Entry>) -> Option<Version> {
        entry.filter(|e| e.value.is_some()).map(|e| e.version)
    }
}

impl Model {
    /// A stamp for an attempt leaving its client now.
    pub(crate) fn stamp(&mut self) -> u64 {
        self.stamps += 1;
        self.stamps
    }

    /// A new proposal number.
    pub(crate) fn proposal(&mut self) -> u64 {
        self.proposals += 1;
        self.proposals
    }
}

/// The range of `key` among `ranges` (or its home among regions), by a
/// hash of the key.
pub(crate) fn range_index(key: &str, ranges: usize) -> usize {
    if ranges <= 1 {
        return 0;
    }
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h % ranges as u64) as usize
}

/// The point just below `p`.
fn predecessor(p: Point) -> Point {
    match p.logical.checked_sub(1) {
        Some(l) => Point::hlc(p.wall, l),
        None => Point::hlc(p.wall.saturating_sub(1), u32::MAX),
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

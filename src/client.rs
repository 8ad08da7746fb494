//! The client: policy enforcement, sessions, verification and retries over
//! any [`Backend`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{timeout_at, Instant};
use tracing::field::Empty;
use tracing::Instrument;

use crate::backend::{Backend, Capabilities, IdempotencyKey, ReadPlan, WriteRequest};
use crate::clock::{Clock, ClockGuard, SystemClock};
use crate::error::{Error, Retryability};
use crate::observe::Metrics;
use crate::policy::ReadPolicy;
use crate::random::SplitMix64;
use crate::record::{Committed, Precondition, Read, ReplicaRole};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::routing::{BreakerConfig, Circuit, Kind, Router, Tried};
use crate::session::{Scope, Session, SessionFloor, SessionToken};
use crate::topology::Region;

/// Client-wide settings. `ClientConfig::default()` is the strict
/// configuration quorate recommends.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Deadline of a read, all attempts and escalations included.
    pub read_deadline: Duration,
    /// Deadline of a write, retries and ambiguity resolution included
    /// (read-after-write verification has its own).
    pub write_deadline: Duration,
    /// Longest single attempt; a region that hangs is left after it.
    pub attempt_timeout: Duration,
    /// Shorter attempt timeouts learned per region and kind of request:
    /// smoothed latency plus four mean deviations (as TCP's retransmission
    /// timer) and at least three smoothed latencies, at least
    /// [`ClientConfig::min_attempt_timeout`] and at most
    /// [`ClientConfig::attempt_timeout`]. A write that times out is resolved
    /// through its idempotency key, so a spurious timeout costs a lookup,
    /// never a double application.
    pub adaptive_timeouts: bool,
    /// The floor of adaptive attempt timeouts.
    pub min_attempt_timeout: Duration,
    /// Backoff and attempt cap.
    pub retry: RetryPolicy,
    /// Retries allowed per first attempt (token bucket ratio).
    pub retry_budget_ratio: f64,
    /// Retries allowed before any first attempt has deposited.
    pub retry_budget_reserve: u32,
    /// How long a region's circuit stays open after it failed, before one
    /// trial request (or a successful probe) may close it.
    pub region_ejection: Duration,
    /// Consecutive soft failures (errors other than unreachable or timed
    /// out) that open a region's circuit.
    pub failure_threshold: u32,
    /// Hedged reads: after a delay, a read goes also to the next-best region
    /// and the first acceptable answer wins. `None` disables hedging.
    pub hedge: Option<Hedge>,
    /// For backends whose writes go to a key's home region (multi-writer
    /// tables): after the home region has been down this long, writes fail
    /// over to the best healthy region, and come back when the home
    /// recovers. `None` (the default) never fails over: a write is
    /// unavailable rather than risk two regions applying conflicting
    /// transitions.
    pub home_failover: Option<Duration>,
    /// Added to a replica's own staleness bound before comparing it with a
    /// bounded-staleness policy: the error of the clocks involved.
    pub clock_uncertainty: Duration,
    /// Seed of the jitter generator (deterministic drills); `None` = entropy.
    pub seed: Option<u64>,
    /// This process's wall clock, for clock-offset estimates.
    pub clock: Arc<dyn Clock>,
    /// A region whose clock strays from the others by more than this fraction
    /// of the database's maximum clock offset is not used to assign
    /// timestamps (writes, strong reads) nor trusted for staleness bounds.
    pub clock_exclusion: f64,
    /// Clock deviations above this are logged as warnings.
    pub clock_warning: Duration,
    /// Requires and produces signed session tokens.
    #[cfg(feature = "signed-tokens")]
    pub signing_key: Option<crate::session::SigningKey>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            read_deadline: Duration::from_secs(2),
            write_deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            adaptive_timeouts: true,
            min_attempt_timeout: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            retry_budget_ratio: 0.2,
            retry_budget_reserve: 100,
            region_ejection: Duration::from_secs(1),
            failure_threshold: 3,
            hedge: None,
            home_failover: None,
            clock_uncertainty: Duration::ZERO,
            seed: None,
            clock: Arc::new(SystemClock),
            clock_exclusion: 0.5,
            clock_warning: Duration::from_millis(100),
            #[cfg(feature = "signed-tokens")]
            signing_key: None,
        }
    }
}

impl ClientConfig {
    /// Checks every field; [`Client::new`] calls it.
    pub fn validate(&self) -> Result<(), Error> {
        self.retry.validate()?;
        if self.failure_threshold == 0 {
            return Err(Error::InvalidInput(
                "failure_threshold must be at least 1".into(),
            ));
        }
        if let Some(h) = &self.hedge {
            h.validate()?;
        }
        if !(self.clock_exclusion > 0.0 && self.clock_exclusion <= 1.0) {
            return Err(Error::InvalidInput(
                "clock_exclusion must be in (0, 1]".into(),
            ));
        }
        for (name, d) in [
            ("read_deadline", self.read_deadline),
            ("write_deadline", self.write_deadline),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidInput(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

/// Hedged reads: a read that has not answered within a high percentile of
/// recent read latency goes also to the next-best eligible region.
#[derive(Clone, Debug, PartialEq)]
pub struct Hedge {
    /// The percentile of recent read latencies to wait before hedging.
    pub percentile: f64,
    /// The shortest delay (also used until enough latencies are known).
    pub min_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Default for Hedge {
    fn default() -> Self {
        Hedge {
            percentile: 0.95,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl Hedge {
    fn validate(&self) -> Result<(), Error> {
        if !(self.percentile > 0.0 && self.percentile <= 1.0) {
            return Err(Error::InvalidInput(
                "hedge percentile must be in (0, 1]".into(),
            ));
        }
        if self.min_delay > self.max_delay {
            return Err(Error::InvalidInput(
                "hedge min_delay exceeds max_delay".into(),
            ));
        }
        Ok(())
    }
}

/// The latest read latencies, for the hedge delay.
#[derive(Debug, Default)]
struct LatencyWindow {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    samples: Vec<u64>,
    next: usize,
    fresh: u32,
    cached: Option<Duration>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            samples: Vec::with_capacity(WINDOW),
            next: 0,
            fresh: 0,
            cached: None,
        }
    }
}

const WINDOW: usize = 128;

impl LatencyWindow {
    fn record(&self, latency: Duration) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        if w.samples.len() < WINDOW {
            w.samples.push(nanos);
        } else {
            let i = w.next;
            w.samples[i] = nanos;
        }
        w.next = (w.next + 1) % WINDOW;
        w.fresh += 1;
    }

    /// The hedge delay: the percentile of the window, recomputed every 16
    /// samples, clamped to the policy's bounds.
    fn delay(&self, hedge: &Hedge) -> Duration {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.samples.len() < 16 {
            return hedge.min_delay;
        }
        if w.cached.is_none() || w.fresh >= 16 {
            let mut sorted = w.samples.clone();
            sorted.sort_unstable();
            let rank = ((sorted.len() as f64 - 1.0) * hedge.percentile).round() as usize;
            w.cached = Some(Duration::from_nanos(sorted[rank.min(sorted.len() - 1)]));
            w.fresh = 0;
        }
        w.cached
            .unwrap_or(hedge.min_delay)
            .clamp(hedge.min_delay, hedge.max_delay)
    }
}

/// What a client knows of one region.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionHealth {
    /// The region.
    pub region: Region,
    /// Its circuit breaker.
    pub circuit: Circuit,
    /// Smoothed latency of successful attempts and probes.
    pub latency: Option<Duration>,
    /// Replica lag it last reported.
    pub replica_lag: Option<Duration>,
    /// How far its clock strays from the median of all regions (with the
    /// estimate's error), once probed.
    pub clock_deviation: Option<Duration>,
    /// Whether the clock guard keeps it from assigning timestamps.
    pub clock_excluded: bool,
}

/// Which regions a read-after-write check reads back in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyRegions {
    /// This process's region.
    Local,
    /// Every region of the topology.
    All,
    /// Every region the client currently routes to: not ejected after a
    /// failure and not excluded by the clock guard (the local region always).
    Healthy,
    /// The regions named.
    These(Vec<Region>),
}

/// A read-after-write check: after commit, read back where the next reader
/// will read until the committed version is visible, or fail with
/// [`Error::NotVisible`] at the deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    /// Where the next readers are.
    pub regions: VerifyRegions,
    /// How they read: `Strong` reads back through the leader path of each
    /// region, anything else at each region's replicas.
    pub policy: ReadPolicy,
    /// How long to wait for visibility.
    pub deadline: Duration,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            regions: VerifyRegions::Local,
            policy: ReadPolicy::Strong,
            deadline: Duration::from_secs(2),
        }
    }
}

/// Options of one logical write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// A read-after-write check, or `None` to skip it.
    pub verify: Option<Verify>,
    /// The logical write's identity across retries; generated when `None`.
    /// Pass the same key when a caller itself retries a request.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Overrides [`ClientConfig::write_deadline`].
    pub deadline: Option<Duration>,
}

impl WriteOptions {
    /// Options with the default read-after-write check.
    pub fn verified() -> WriteOptions {
        WriteOptions {
            verify: Some(Verify::default()),
            ..Default::default()
        }
    }
}

/// The entry point: enforces read policies, tracks sessions, verifies writes
/// and retries safely over a [`Backend`].
///
/// Cloning is cheap and shares everything; no clone or connection is pinned
/// to a region.
///
/// ```
/// use quorate::sim::{Sim, SimConfig};
/// use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), quorate::Error> {
/// let sim = Sim::new(SimConfig::new(["eu", "us", "ap"])?)?;
/// let client = Client::new(sim.at("eu")?, ClientConfig::default())?;
/// let session = client.session();
/// let c = client
///     .write(&session, "acct:7", "100".into(), Precondition::IfAbsent, &WriteOptions::verified())
///     .await?;
/// let read = client.read(&session, "acct:7", ReadPolicy::Session).await?;
/// assert_eq!(read.version(), Some(c.version));
/// # Ok(()) }
/// ```
pub struct Client<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B> {
    backend: B,
    config: ClientConfig,
    capabilities: Capabilities,
    scope: Scope,
    router: Router,
    metrics: Metrics,
    budget: RetryBudget,
    guard: ClockGuard,
    hedge_delays: LatencyWindow,
    rng: Mutex<SplitMix64>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.inner.backend)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

enum Check {
    Accept,
    Escalate(&'static str),
    Retry(&'static str),
}

impl<B: Backend> Client<B> {
    /// A client over `backend` with a validated configuration.
    pub fn new(backend: B, config: ClientConfig) -> Result<Client<B>, Error> {
        config.validate()?;
        let topology = backend.topology().clone();
        let region_count = topology.regions().len();
        let rng = config
            .seed
            .map(SplitMix64::new)
            .unwrap_or_else(SplitMix64::from_entropy);
        Ok(Client {
            inner: Arc::new(Inner {
                capabilities: backend.capabilities(),
                scope: backend.scope().clone(),
                router: Router::new(
                    &topology,
                    BreakerConfig {
                        open_for: config.region_ejection,
                        failure_threshold: config.failure_threshold,
                    },
                ),
                hedge_delays: LatencyWindow::default(),
                metrics: Metrics::new(&topology),
                budget: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_reserve)?,
                guard: ClockGuard::new(
                    region_count,
                    backend
                        .capabilities()
                        .max_clock_offset
                        .map(|m| m.mul_f64(config.clock_exclusion)),
                    config.clock_warning,
                ),
                rng: Mutex::new(rng),
                backend,
                config,
            }),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The scope session tokens of this client carry.
    pub fn scope(&self) -> &Scope {
        &self.inner.scope
    }

    /// A new session with no progress.
    pub fn session(&self) -> Session {
        Session::from_token(SessionToken::new(self.inner.scope.clone()))
    }

    /// Continues a session from a token another service sent. Fails with a
    /// typed token error for garbled, oversize, foreign or (when signing is
    /// configured) unsigned or forged tokens.
    pub fn resume_session(&self, token: &str) -> Result<Session, Error> {
        Ok(Session::from_token(self.decode_token(token)?))
    }

    /// Decodes a token of this client's scope.
    pub fn decode_token(&self, token: &str) -> Result<SessionToken, Error> {
        #[cfg(feature = "signed-tokens")]
        if let Some(key) = &self.inner.config.signing_key {
            return Ok(SessionToken::decode_signed(token, &self.inner.scope, key)?);
        }
        Ok(SessionToken::decode(token, &self.inner.scope)?)
    }

    /// The session's token as text to send to another service (signed when a
    /// signing key is configured).
    pub fn encode_token(&self, session: &Session) -> String {
        #[cfg(feature = "signed-tokens")]
        if let Some(key) = &self.inner.config.signing_key {
            return session.token().encode_signed(key);
        }
        session.encode()
    }

    fn jitter(&self, retry: u32) -> Duration {
        let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.config.retry.backoff(retry, &mut rng)
    }

    fn home_index(&self, key: &str) -> Option<usize> {
        self.inner
            .backend
            .home_region(key)
            .and_then(|r| self.inner.router.index_of(&r))
    }

    /// Reads `key` under `policy` in `session`.
    ///
    /// The read is planned at the nearest replica the policy allows, its
    /// [`Freshness`](crate::Freshness) is checked against the policy and the
    /// session, and a read that misses is escalated to the leader path —
    /// never returned silently.
    pub async fn read(
        &self,
        session: &Session,
        key: &str,
        policy: ReadPolicy,
    ) -> Result<Read<Bytes>, Error> {
        let span = tracing::debug_span!(
            "quorate.read",
            db.operation.name = "read",
            quorate.policy = policy.label(),
            quorate.region = Empty,
            quorate.replica = Empty,
            quorate.read_point = Empty,
            quorate.staleness_ms = Empty,
            quorate.attempt = Empty,
            quorate.outcome = Empty,
        );
        self.read_inner(session, key, policy).instrument(span).await
    }

    async fn read_inner(
        &self,
        session: &Session,
        key: &str,
        policy: ReadPolicy,
    ) -> Result<Read<Bytes>, Error> {
        let inner = &*self.inner;
        let deadline = Instant::now() + inner.config.read_deadline;
        let floor = match policy {
            ReadPolicy::Strong | ReadPolicy::Session => session.floor(key),
            _ => SessionFloor::default(),
        };
        inner.budget.deposit();
        let mut tried = Tried::default();
        let mut leader = policy == ReadPolicy::Strong || !inner.capabilities.follower_reads;
        let mut attempt = 0;
        let mut retries = 0;
        loop {
            attempt += 1;
            let home = if leader && !inner.capabilities.strong_reads_anywhere {
                self.home_index(key)
            } else {
                None
            };
            let region_index = match home {
                Some(h) => h,
                None if leader => {
                    inner
                        .router
                        .pick(inner.router.local(), Kind::LeaderRead, tried, |r| {
                            inner.guard.excluded(r)
                        })
                }
                // A bounded read skips replicas last measured beyond its bound.
                None => {
                    let lagging = match policy {
                        ReadPolicy::BoundedStaleness(b) => {
                            inner.router.lagging_beyond(b.duration())
                        }
                        _ => Tried::default(),
                    };
                    inner
                        .router
                        .pick(inner.router.local(), Kind::FollowerRead, tried, |r| {
                            lagging.contains(r)
                        })
                }
            };
            let region = inner.router.region(region_index);
            let plan = ReadPlan {
                key,
                region,
                role: if leader {
                    ReplicaRole::Leader
                } else {
                    ReplicaRole::Follower
                },
                policy,
                floor,
                deadline,
            };
            let started = Instant::now();
            let hedgeable = home.is_none() && inner.config.hedge.is_some();
            let (result, region_index) = if hedgeable {
                self.hedged(&plan, region_index, tried, leader, deadline, &floor)
                    .await
            } else {
                let r = self
                    .attempt(
                        region_index,
                        read_kind(leader),
                        leader,
                        deadline,
                        inner.backend.read(&plan),
                    )
                    .await;
                (r, region_index)
            };
            if result.is_ok() && inner.config.hedge.is_some() {
                inner.hedge_delays.record(Instant::now() - started);
            }
            let error = match result {
                Ok(read) => match self.check(policy, &floor, &read, region_index) {
                    Check::Accept => {
                        let role = read.freshness.role;
                        inner
                            .metrics
                            .read(region_index, policy, role == ReplicaRole::Leader);
                        match policy {
                            ReadPolicy::Session => {
                                session.observe(key, read.version(), read.freshness.point)
                            }
                            ReadPolicy::Strong => session.observe(key, read.version(), None),
                            _ => {}
                        }
                        record_read(&read, attempt);
                        return Ok(read);
                    }
                    Check::Escalate(reason) if !leader => {
                        inner.metrics.escalation(policy, reason);
                        leader = true;
                        continue;
                    }
                    Check::Escalate(reason) | Check::Retry(reason) => Error::FreshnessUnmet {
                        key: key.to_owned(),
                        policy,
                        reason,
                    },
                },
                Err(e) => e,
            };
            if error.retryability() == Retryability::Permanent {
                tracing::Span::current().record("quorate.outcome", error.reason());
                return Err(error);
            }
            if matches!(
                error,
                Error::RegionUnavailable { .. } | Error::Timeout { .. }
            ) {
                tried.add(region_index);
            }
            retries += 1;
            self.before_retry(&error, attempt, retries, deadline)
                .await?;
        }
    }

    fn check(
        &self,
        policy: ReadPolicy,
        floor: &SessionFloor,
        read: &Read<Bytes>,
        region: usize,
    ) -> Check {
        let f = &read.freshness;
        if let Some(min) = floor.version {
            if read.version().is_none_or(|v| v < min) {
                return if f.role == ReplicaRole::Leader {
                    Check::Retry("leader read older than the session")
                } else {
                    Check::Escalate("replica older than the session's version")
                };
            }
        }
        if f.role == ReplicaRole::Leader {
            return Check::Accept;
        }
        match policy {
            ReadPolicy::Strong => Check::Escalate("strong read served by a follower"),
            ReadPolicy::Session => match (floor.version, floor.point, f.point) {
                (Some(_), _, _) | (None, None, _) => Check::Accept,
                (None, Some(min), Some(p)) if p >= min => Check::Accept,
                (None, Some(_), Some(_)) => Check::Escalate("replica behind the session point"),
                (None, Some(_), None) => Check::Escalate("replica states no point"),
            },
            ReadPolicy::BoundedStaleness(_) if self.inner.guard.excluded(region) => {
                Check::Escalate("replica's clock is excluded")
            }
            ReadPolicy::BoundedStaleness(bound) => match f.staleness_bound {
                Some(s)
                    if s + self.inner.config.clock_uncertainty
                        + self.inner.guard.deviation(region).unwrap_or_default()
                        <= bound.duration() =>
                {
                    Check::Accept
                }
                Some(_) => Check::Escalate("replica beyond the staleness bound"),
                None => Check::Escalate("replica states no staleness bound"),
            },
        }
    }

    /// Sends the read to `first`; if no answer came within the hedge delay,
    /// also to the next-best region. The first acceptable answer wins and
    /// the other request is dropped; when neither is acceptable, the first
    /// region's outcome decides what happens next.
    async fn hedged(
        &self,
        plan: &ReadPlan<'_>,
        first: usize,
        tried: Tried,
        leader: bool,
        deadline: Instant,
        floor: &SessionFloor,
    ) -> (Result<Read<Bytes>, Error>, usize) {
        let inner = &*self.inner;
        let Some(hedge) = &inner.config.hedge else {
            let r = self
                .attempt(
                    first,
                    read_kind(leader),
                    leader,
                    deadline,
                    inner.backend.read(plan),
                )
                .await;
            return (r, first);
        };
        let delay = inner.hedge_delays.delay(hedge);
        let primary = self.attempt(
            first,
            read_kind(leader),
            leader,
            deadline,
            inner.backend.read(plan),
        );
        tokio::pin!(primary);
        tokio::select! {
            biased;
            r = &mut primary => return (r, first),
            _ = tokio::time::sleep(delay) => {}
        }
        let avoid = |r: usize| leader && inner.guard.excluded(r);
        let kind = read_kind(leader);
        let second = inner
            .router
            .pick(inner.router.local(), kind, tried.with(first), avoid);
        if second == first || tried.contains(second) || avoid(second) {
            return (primary.await, first);
        }
        inner.metrics.hedge_fired();
        let second_plan = ReadPlan {
            region: inner.router.region(second),
            ..plan.clone()
        };
        let secondary = self.attempt(
            second,
            kind,
            leader,
            deadline,
            inner.backend.read(&second_plan),
        );
        tokio::pin!(secondary);
        let acceptable = |r: &Result<Read<Bytes>, Error>, region: usize| matches!(r, Ok(read) if matches!(self.check(plan.policy, floor, read, region), Check::Accept));
        let mut first_outcome = None;
        let mut second_done = false;
        loop {
            tokio::select! {
                r = &mut primary, if first_outcome.is_none() => {
                    if acceptable(&r, first) {
                        return (r, first);
                    }
                    first_outcome = Some(r);
                }
                r = &mut secondary, if !second_done => {
                    if acceptable(&r, second) {
                        inner.metrics.hedge_won();
                        return (r, second);
                    }
                    second_done = true;
                }
            }
            if second_done {
                if let Some(r) = first_outcome.take() {
                    return (r, first);
                }
            }
        }
    }

    /// Waits the jittered backoff before retry number `retries`, or fails
    /// when the cap, the budget or the deadline says stop.
    async fn before_retry(
        &self,
        error: &Error,
        attempts: u32,
        retries: u32,
        deadline: Instant,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        if attempts >= inner.config.retry.max_attempts || !inner.budget.withdraw() {
            return Err(Error::RetriesExhausted {
                attempts,
                last: Box::new(clone_error(error)),
            });
        }
        let wake = Instant::now() + self.jitter(retries);
        if wake >= deadline {
            return Err(Error::DeadlineExceeded {
                attempts,
                last: Box::new(clone_error(error)),
            });
        }
        inner.metrics.retry(error);
        tracing::debug!(
            quorate.attempt = attempts,
            reason = error.reason(),
            "retrying"
        );
        tokio::time::sleep_until(wake).await;
        Ok(())
    }

    /// Writes `key` if `precondition` holds, in `session`.
    ///
    /// Retryable failures are retried with backoff under one idempotency key;
    /// an ambiguous outcome is resolved by looking that key up, never by
    /// re-executing blindly. With [`WriteOptions::verify`] the write returns
    /// only once the version is visible where the next reader reads.
    pub async fn write(
        &self,
        session: &Session,
        key: &str,
        value: Bytes,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        let span = tracing::debug_span!(
            "quorate.write",
            db.operation.name = "write",
            quorate.region = Empty,
            quorate.attempt = Empty,
            quorate.outcome = Empty,
        );
        async {
            let committed = self.write_inner(key, &value, precondition, options).await;
            let committed = match committed {
                Ok(c) => c,
                Err(e) => {
                    tracing::Span::current().record("quorate.outcome", e.reason());
                    return Err(e);
                }
            };
            session.observe(key, Some(committed.version), Some(committed.point));
            tracing::Span::current().record("quorate.region", committed.region.as_str());
            if let Some(verify) = &options.verify {
                self.verify(key, &committed, verify).await?;
            }
            tracing::Span::current().record("quorate.outcome", "ok");
            Ok(committed)
        }
        .instrument(span)
        .await
    }

    async fn write_inner(
        &self,
        key: &str,
        value: &Bytes,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        let inner = &*self.inner;
        let deadline = Instant::now() + options.deadline.unwrap_or(inner.config.write_deadline);
        let generated;
        let idem = match &options.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        inner.budget.deposit();
        let mut tried = Tried::default();
        let mut attempt = 0;
        let mut retries = 0;
        loop {
            attempt += 1;
            tracing::Span::current().record("quorate.attempt", attempt);
            let region_index = self.write_region(key, tried);
            let region = inner.router.region(region_index);
            let request = WriteRequest {
                key,
                value,
                precondition,
                idempotency_key: Some(idem),
                region,
                deadline,
            };
            let result = self
                .attempt(
                    region_index,
                    Kind::Write,
                    true,
                    deadline,
                    inner.backend.write(&request),
                )
                .await;
            let error = match result {
                Ok(committed) => {
                    self.count_write(&committed);
                    return Ok(committed);
                }
                Err(e) => e,
            };
            if matches!(
                error,
                Error::RegionUnavailable { .. } | Error::Timeout { .. }
            ) {
                tried.add(region_index);
            }
            match error.retryability() {
                Retryability::Permanent => {
                    if matches!(error, Error::Conflict { .. }) {
                        inner.metrics.conflict();
                    }
                    return Err(error);
                }
                Retryability::Ambiguous => {
                    if let Some(committed) = self.resolve(key, idem, deadline, &error).await? {
                        self.count_write(&committed);
                        return Ok(committed);
                    }
                }
                Retryability::Retryable => {}
            }
            retries += 1;
            self.before_retry(&error, attempt, retries, deadline)
                .await?;
        }
    }

    /// One attempt against one region, bounded by the attempt timeout and
    /// the operation's deadline. When `timestamps` is set the region assigns
    /// timestamps, and a region whose clock the guard distrusts is refused
    /// without sending anything.
    async fn attempt<T>(
        &self,
        region: usize,
        kind: Kind,
        timestamps: bool,
        deadline: Instant,
        request: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let inner = &*self.inner;
        if timestamps && inner.guard.excluded(region) {
            return Err(Error::RegionUnavailable {
                region: inner.router.region(region).clone(),
                reason: "clock offset beyond the guard's limit",
            });
        }
        let started = Instant::now();
        let limit = if inner.config.adaptive_timeouts {
            inner.router.attempt_timeout(
                region,
                kind,
                inner.config.min_attempt_timeout,
                inner.config.attempt_timeout,
            )
        } else {
            inner.config.attempt_timeout
        };
        let result = timeout_at(deadline.min(started + limit), request)
            .await
            .unwrap_or(Err(Error::Timeout {
                after: limit,
                sent: true,
            }));
        match &result {
            Err(e @ (Error::RegionUnavailable { .. } | Error::Timeout { .. })) => {
                if inner.router.failure(region, true) {
                    inner
                        .metrics
                        .ejection(inner.router.region(region), e.reason());
                }
            }
            Err(Error::Backend {
                retryability: Retryability::Retryable,
                ..
            }) => {
                if inner.router.failure(region, false) {
                    inner
                        .metrics
                        .ejection(inner.router.region(region), "errors");
                }
            }
            // The region answered (a conflict or an uncertain read is an
            // answer).
            _ => inner.router.success(region, kind, Instant::now() - started),
        }
        result
    }

    fn count_write(&self, committed: &Committed) {
        if let Some(i) = self.inner.router.index_of(&committed.region) {
            self.inner.metrics.write(i);
        }
    }

    fn write_region(&self, key: &str, tried: Tried) -> usize {
        let inner = &*self.inner;
        if !inner.capabilities.writes_anywhere {
            if let Some(home) = self.home_index(key) {
                let failed_over = inner
                    .config
                    .home_failover
                    .zip(inner.router.down_for(home))
                    .is_some_and(|(after, down)| down >= after);
                if !failed_over {
                    return home;
                }
                return inner.router.pick(home, Kind::Write, tried.with(home), |r| {
                    inner.guard.excluded(r)
                });
            }
        }
        inner
            .router
            .pick(inner.router.local(), Kind::Write, tried, |r| {
                inner.guard.excluded(r)
            })
    }

    /// Resolves an ambiguous attempt through the idempotency record: `Some`
    /// when the logical write committed, `None` when it did not.
    async fn resolve(
        &self,
        key: &str,
        idem: &IdempotencyKey,
        deadline: Instant,
        ambiguous: &Error,
    ) -> Result<Option<Committed>, Error> {
        let inner = &*self.inner;
        let mut tried = Tried::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let region_index = self.write_region(key, tried);
            let region = inner.router.region(region_index);
            let result = self
                .attempt(
                    region_index,
                    Kind::LeaderRead,
                    true,
                    deadline,
                    inner.backend.lookup(region, key, idem),
                )
                .await;
            match result {
                Ok(outcome) => {
                    inner.metrics.ambiguous_resolved(outcome.is_some());
                    tracing::debug!(applied = outcome.is_some(), "ambiguous commit resolved");
                    return Ok(outcome);
                }
                Err(e) if e.retryability() == Retryability::Permanent => return Err(e),
                Err(e) => {
                    if matches!(e, Error::RegionUnavailable { .. } | Error::Timeout { .. }) {
                        tried.add(region_index);
                    }
                    let wake = Instant::now() + self.jitter(attempt);
                    if wake >= deadline {
                        // The outcome stays unknown: report the ambiguity.
                        return Err(Error::DeadlineExceeded {
                            attempts: attempt,
                            last: Box::new(clone_error(ambiguous)),
                        });
                    }
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }

    /// Reads the committed version back where the next reader will read.
    async fn verify(&self, key: &str, committed: &Committed, verify: &Verify) -> Result<(), Error> {
        let inner = &*self.inner;
        let start = Instant::now();
        let deadline = start + verify.deadline;
        let regions: Vec<usize> = match &verify.regions {
            VerifyRegions::Local => vec![inner.router.local()],
            VerifyRegions::All => (0..inner.backend.topology().regions().len()).collect(),
            VerifyRegions::Healthy => (0..inner.backend.topology().regions().len())
                .filter(|&r| {
                    r == inner.router.local()
                        || (inner.router.healthy(r) && !inner.guard.excluded(r))
                })
                .collect(),
            VerifyRegions::These(list) => list
                .iter()
                .map(|r| {
                    inner.router.index_of(r).ok_or_else(|| {
                        Error::Topology(crate::TopologyError::UnknownRegion(r.clone()))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let leader = verify.policy == ReadPolicy::Strong;
        for region_index in regions {
            let region = inner.router.region(region_index).clone();
            let serving = match (leader, inner.capabilities.strong_reads_anywhere) {
                (true, false) => self.home_index(key).unwrap_or(region_index),
                _ => region_index,
            };
            let mut poll = Duration::from_millis(2);
            loop {
                let plan = ReadPlan {
                    key,
                    region: inner.router.region(serving),
                    role: if leader {
                        ReplicaRole::Leader
                    } else {
                        ReplicaRole::Follower
                    },
                    policy: verify.policy,
                    floor: SessionFloor::default(),
                    deadline,
                };
                let seen = match timeout_at(deadline, inner.backend.read(&plan)).await {
                    Ok(Ok(read)) => read.version().is_some_and(|v| v >= committed.version),
                    Ok(Err(_)) | Err(_) => false,
                };
                if seen {
                    break;
                }
                if Instant::now() >= deadline {
                    inner.metrics.verify_failure();
                    tracing::warn!(
                        quorate.region = region.as_str(),
                        "read-after-write check failed"
                    );
                    return Err(Error::NotVisible {
                        key: key.to_owned(),
                        version: committed.version,
                        region,
                        waited: Instant::now() - start,
                    });
                }
                // The last look is at the deadline itself.
                tokio::time::sleep_until((Instant::now() + poll).min(deadline)).await;
                poll = (poll * 2).min(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Probes a region: the server's clock and replica lag, and this
    /// process's estimate of the offset between the two clocks. The estimate
    /// feeds the clock guard; a region that does not answer is ejected.
    pub async fn probe(&self, region: &Region) -> Result<crate::clock::OffsetSample, Error> {
        let inner = &*self.inner;
        let index = inner
            .router
            .index_of(region)
            .ok_or_else(|| Error::Topology(crate::TopologyError::UnknownRegion(region.clone())))?;
        let sent = inner.config.clock.now_nanos();
        let sent_at = Instant::now();
        let deadline = Instant::now() + inner.config.attempt_timeout;
        let probe = match timeout_at(deadline, inner.backend.probe(region)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.probe_failed(index, region, e.reason());
                return Err(e);
            }
            Err(_) => {
                self.probe_failed(index, region, "timeout");
                return Err(Error::Timeout {
                    after: inner.config.attempt_timeout,
                    sent: true,
                });
            }
        };
        let received = inner.config.clock.now_nanos();
        inner
            .router
            .success(index, Kind::FollowerRead, Instant::now() - sent_at);
        let sample = crate::clock::OffsetSample::new(sent, probe.server_time_nanos, received);
        let was_excluded = inner.guard.excluded(index);
        let deviation = inner.guard.record(index, &sample);
        inner
            .metrics
            .clock_offset(index, sample.offset_nanos as f64 / 1e9);
        inner
            .metrics
            .clock_deviation(index, deviation.as_secs_f64());
        if deviation > inner.guard.warning() {
            tracing::warn!(
                quorate.region = region.as_str(),
                deviation_ms = deviation.as_millis() as u64,
                "clock offset above the warning threshold"
            );
        }
        if !was_excluded && inner.guard.excluded(index) {
            inner.metrics.ejection(region, "clock_offset");
        }
        if let Some(lag) = probe.replica_lag {
            inner.router.set_replica_lag(index, lag);
            inner.metrics.replica_lag(index, lag.as_secs_f64());
        }
        Ok(sample)
    }

    fn probe_failed(&self, index: usize, region: &Region, reason: &'static str) {
        if self.inner.router.failure(index, true) {
            self.inner.metrics.ejection(region, reason);
        }
    }

    /// Probes every region once, concurrently: clock offsets and replica lag
    /// feed the clock guard and the metrics, and unreachable regions are
    /// ejected. Call it periodically (for example every second).
    pub async fn refresh_health(&self) {
        let regions: Vec<Region> = self.inner.backend.topology().regions().cloned().collect();
        let probes = regions.iter().map(|r| self.probe(r));
        for result in join_all(probes).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "probe failed");
            }
        }
    }

    /// What the client knows of each region now: circuit, latency estimate,
    /// replica lag and clock deviation.
    pub fn health(&self) -> Vec<RegionHealth> {
        let inner = &*self.inner;
        (0..inner.router.len())
            .map(|i| {
                let (circuit, latency, replica_lag) = inner.router.status(i);
                RegionHealth {
                    region: inner.router.region(i).clone(),
                    circuit,
                    latency,
                    replica_lag,
                    clock_deviation: inner.guard.deviation(i),
                    clock_excluded: inner.guard.excluded(i),
                }
            })
            .collect()
    }

    /// Whether the clock guard currently excludes `region`.
    pub fn clock_excluded(&self, region: &Region) -> bool {
        self.inner
            .router
            .index_of(region)
            .is_some_and(|i| self.inner.guard.excluded(i))
    }
}

/// Runs futures concurrently on the current task and collects their outputs
/// in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn record_read(read: &Read<Bytes>, attempt: u32) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let f = &read.freshness;
    span.record("quorate.region", f.region.as_str());
    span.record("quorate.replica", f.role.label());
    if let Some(p) = f.point {
        span.record("quorate.read_point", tracing::field::display(p));
    }
    if let Some(s) = f.staleness_bound {
        span.record("quorate.staleness_ms", s.as_millis() as u64);
    }
    span.record("quorate.attempt", attempt);
    span.record("quorate.outcome", "ok");
}

fn read_kind(leader: bool) -> Kind {
    if leader {
        Kind::LeaderRead
    } else {
        Kind::FollowerRead
    }
}

/// Errors are not `Clone` (they may box a driver error); retries keep a
/// description of the last one.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Timeout { after, sent } => Error::Timeout {
            after: *after,
            sent: *sent,
        },
        Error::RegionUnavailable { region, reason } => Error::RegionUnavailable {
            region: region.clone(),
            reason,
        },
        Error::Uncertainty { key, read, value } => Error::Uncertainty {
            key: key.clone(),
            read: *read,
            value: *value,
        },
        Error::FreshnessUnmet {
            key,
            policy,
            reason,
        } => Error::FreshnessUnmet {
            key: key.clone(),
            policy: *policy,
            reason,
        },
        other => Error::backend(other.retryability(), None, other.to_string()),
    }
}

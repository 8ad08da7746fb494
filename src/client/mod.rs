//! The client: policy enforcement, sessions, verification and retries over
//! any [`Backend`]. Reads are in `read.rs`, writes and their checks in
//! `write.rs`, multi-record writes in `transact.rs`, what the client learns
//! of regions in `health.rs`.

pub(crate) mod deadline;
mod health;
mod read;
mod transact;
mod write;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

use crate::backend::{Backend, Capabilities, DbOperation, IdempotencyKey, ReadPlan, WriteRequest};
use crate::clock::{Clock, ClockGuard, SystemClock};
use crate::error::{Error, Retryability};
use crate::observe::Metrics;
use crate::policy::ReadPolicy;
use crate::random::SplitMix64;
use crate::record::{Committed, Mutation, Point, Precondition, Read, ReplicaRole};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::routing::{BreakerConfig, Circuit, Kind, Router, Tried};
use crate::session::{Scope, Session, SessionFloor, SessionToken};
use crate::shard::{self, Padded, SHARDS};
use crate::topology::Region;

pub(crate) use health::join_all;
pub use health::RegionHealth;
use read::LatencyWindow;
pub use read::{Hedge, Queried, QueryPlan, ShownPoint};
pub use transact::Transaction;
pub use write::{Verify, VerifyRegions, WriteOptions};

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
    /// How long a probe's clock sample counts. An older sample, or that of a
    /// region whose last probe failed, is unknown: it no longer votes in the
    /// median, and a region the guard excluded stays excluded until a fresh
    /// sample clears it. Probe more often than this.
    pub clock_sample_ttl: Duration,
    /// Probes every region in the background at this period, each region
    /// on its own schedule (as [`Client::health_checks`] does): the task is
    /// spawned by [`Client::new`] on the current Tokio runtime and ends
    /// once the last handle on the client is dropped. Must be positive and
    /// below `clock_sample_ttl`. `None` (the default): the application
    /// drives probes ([`Client::refresh_health`], [`Client::health_checks`]).
    pub health_checks: Option<Duration>,
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
            clock_sample_ttl: Duration::from_secs(3),
            health_checks: None,
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
            ("clock_sample_ttl", self.clock_sample_ttl),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidInput(format!("{name} must be positive")));
            }
        }
        if let Some(period) = self.health_checks {
            if period.is_zero() || period >= self.clock_sample_ttl {
                return Err(Error::InvalidInput(format!(
                    "health_checks must be positive and below clock_sample_ttl ({:?}), got {period:?}",
                    self.clock_sample_ttl
                )));
            }
        }
        Ok(())
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
    /// The scope, one copy per thread shard: every new session takes a
    /// reference, and one shared copy would move its reference count
    /// between cores on every request that starts a session.
    scopes: [Padded<Scope>; SHARDS],
    router: Router,
    metrics: Metrics,
    budget: RetryBudget,
    guard: ClockGuard,
    hedge_delays: LatencyWindow,
    deadlines: deadline::Deadlines,
    rng: Mutex<SplitMix64>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.inner.backend)
            .field("scope", self.inner.scope())
            .finish_non_exhaustive()
    }
}

impl<B> Inner<B> {
    /// The calling thread's copy of the scope.
    fn scope(&self) -> &Scope {
        &self.scopes[shard::current()]
    }
}

enum Check {
    Accept,
    Escalate(&'static str),
    Retry(&'static str),
    /// A linearizable read older than the session's version of the key.
    Behind {
        required: crate::record::Version,
    },
}

impl<B: Backend> Client<B> {
    /// A client over `backend` with a validated configuration: a
    /// configuration that cannot work is refused here, with the field it
    /// concerns, not at the first request.
    ///
    /// ```
    /// use std::time::Duration;
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Client, ClientConfig, Error};
    ///
    /// # fn main() -> Result<(), Error> {
    /// let backend = Sim::new(SimConfig::new(["eu", "us"])?)?.at("eu")?;
    /// let config = ClientConfig {
    ///     read_deadline: Duration::from_millis(800),
    ///     ..ClientConfig::default()
    /// };
    /// let client = Client::new(backend.clone(), config)?;
    ///
    /// let broken = ClientConfig { read_deadline: Duration::ZERO, ..ClientConfig::default() };
    /// let err = Client::new(backend, broken).unwrap_err();
    /// assert!(err.to_string().contains("read_deadline"));
    /// # drop(client);
    /// # Ok(()) }
    /// ```
    pub fn new(backend: B, config: ClientConfig) -> Result<Client<B>, Error> {
        config.validate()?;
        let health_checks = match config.health_checks {
            Some(period) => Some((
                period,
                tokio::runtime::Handle::try_current().map_err(|_| {
                    Error::InvalidInput(
                        "health_checks spawns a task: build the client inside a Tokio runtime"
                            .into(),
                    )
                })?,
            )),
            None => None,
        };
        let topology = backend.topology().clone();
        let region_count = topology.regions().len();
        let rng = config
            .seed
            .map(SplitMix64::new)
            .unwrap_or_else(SplitMix64::from_entropy);
        let client = Client {
            inner: Arc::new(Inner {
                capabilities: backend.capabilities(),
                scopes: std::array::from_fn(|_| Padded::new(backend.scope().unshared())),
                router: Router::new(
                    &topology,
                    BreakerConfig {
                        open_for: config.region_ejection,
                        failure_threshold: config.failure_threshold,
                    },
                ),
                hedge_delays: LatencyWindow::default(),
                deadlines: deadline::Deadlines::new(
                    config.min_attempt_timeout.min(config.attempt_timeout) / 10,
                ),
                metrics: Metrics::new(&backend),
                budget: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_reserve)?,
                guard: ClockGuard::new(
                    region_count,
                    backend
                        .capabilities()
                        .max_clock_offset
                        .map(|m| m.mul_f64(config.clock_exclusion)),
                    config.clock_warning,
                    config.clock_sample_ttl,
                    backend.capabilities().max_staleness,
                ),
                rng: Mutex::new(rng),
                backend,
                config,
            }),
        };
        if let Some((period, runtime)) = health_checks {
            // Claims count once the clocks are known, not before the first
            // probes answer.
            client.inner.guard.probing();
            client.spawn_health_checks(&runtime, period);
        }
        Ok(client)
    }

    /// One task per region probing it every `period` while a handle on
    /// the client remains (it holds the client only during a probe).
    fn spawn_health_checks(&self, runtime: &tokio::runtime::Handle, period: Duration) {
        for region in self.inner.backend.topology().regions() {
            let region = region.clone();
            let client = Arc::downgrade(&self.inner);
            runtime.spawn(async move {
                loop {
                    let next = tokio::time::Instant::now() + period;
                    {
                        let Some(inner) = client.upgrade() else {
                            return;
                        };
                        let client = Client { inner };
                        if let Err(e) = client.probe(&region).await {
                            tracing::debug!(
                                quorate.region = region.as_str(),
                                error = %e,
                                "probe failed"
                            );
                        }
                    }
                    tokio::time::sleep_until(next).await;
                }
            });
        }
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
        self.inner.scope()
    }

    /// A new session with no progress.
    pub fn session(&self) -> Session {
        Session::empty(self.inner.scope().clone())
    }

    /// Continues a session from a token another service sent. Fails with a
    /// typed token error for garbled, oversize, foreign or (when signing is
    /// configured) unsigned or forged tokens.
    ///
    /// ```
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Client, ClientConfig, Error, Precondition, ReadPolicy, WriteOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), quorate::Error> {
    /// let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
    /// let checkout = Client::new(sim.at("eu")?, ClientConfig::default())?;
    /// let session = checkout.session();
    /// let placed = checkout
    ///     .write(&session, "order/9", "placed".into(), Precondition::IfAbsent, &WriteOptions::default())
    ///     .await?;
    /// // The token travels with the request (a header, say) to another
    /// // service, which reads at least what the checkout wrote.
    /// let token = checkout.encode_token(&session);
    /// let shipping = Client::new(sim.at("us")?, ClientConfig::default())?;
    /// let resumed = shipping.resume_session(&token)?;
    /// let order = shipping.read(&resumed, "order/9", ReadPolicy::Session).await?;
    /// assert_eq!(order.version(), Some(placed.version));
    /// // Garbage is refused with a typed error, never a panic.
    /// assert!(matches!(shipping.resume_session("not a token"), Err(Error::Token(_))));
    /// # Ok(()) }
    /// ```
    pub fn resume_session(&self, token: &str) -> Result<Session, Error> {
        Ok(Session::from_token(self.decode_token(token)?))
    }

    /// Decodes a token of this client's scope.
    pub fn decode_token(&self, token: &str) -> Result<SessionToken, Error> {
        #[cfg(feature = "signed-tokens")]
        if let Some(key) = &self.inner.config.signing_key {
            return Ok(SessionToken::decode_signed(token, self.inner.scope(), key)?);
        }
        Ok(SessionToken::decode(token, self.inner.scope())?)
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

    /// The key's home region, for backends whose strong reads or writes
    /// go there; a home outside the topology is a typed error, never a
    /// reason to serve the request wherever it happens to be.
    fn home_index(&self, key: &str) -> Result<usize, Error> {
        self.inner
            .backend
            .home_region(key)
            .and_then(|r| self.inner.router.index_of(r))
            .ok_or_else(|| {
                Error::Topology(crate::TopologyError::NoHomeRegion {
                    key: key.to_owned(),
                })
            })
    }

    /// Waits the jittered backoff before retry number `retries`, or says
    /// why the operation stops: the attempt cap, the retry budget or the
    /// deadline.
    async fn before_retry(
        &self,
        error: &Error,
        attempts: u32,
        retries: u32,
        deadline: Instant,
    ) -> Result<(), Stop> {
        let inner = &*self.inner;
        if inner
            .config
            .retry
            .max_attempts
            .is_some_and(|cap| attempts >= cap)
        {
            return Err(Stop::Cap);
        }
        let wake = Instant::now() + self.jitter(retries);
        if wake >= deadline {
            return Err(Stop::Deadline);
        }
        if !inner.budget.withdraw() {
            return Err(Stop::Budget);
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

    /// One attempt against one region, bounded by the attempt timeout and
    /// the operation's deadline. When `timestamps` is set the region assigns
    /// timestamps, and a region whose clock the guard distrusts is refused
    /// without sending anything.
    ///
    /// The request is made by `request` only once the attempt goes ahead,
    /// straight into the bounded future, so that its (possibly large) state
    /// is stored once. `started` is when the attempt starts (an operation's
    /// first attempt passes the operation's own start, read once).
    #[allow(clippy::too_many_arguments)]
    async fn attempt<T, F>(
        &self,
        started: Instant,
        region: usize,
        kind: Kind,
        timestamps: bool,
        deadline: Instant,
        (op, key): (DbOperation, Option<&str>),
        request: impl FnOnce() -> F,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let inner = &*self.inner;
        // The attempt's CLIENT span, in OpenTelemetry's database
        // conventions, under the operation's `quorate.*` span.
        let operation = inner.backend.db_operation_name(op);
        let system = inner.backend.db_system();
        let span = tracing::info_span!(
            "quorate.attempt",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = system,
            db.operation.name = operation,
            db.namespace = Empty,
            db.collection.name = Empty,
            server.address = Empty,
            server.port = Empty,
            db.response.status_code = Empty,
            error.type = Empty,
            quorate.region = Empty,
        );
        if !span.is_disabled() {
            let region_name = inner.router.region(region);
            let target = inner.backend.db_target(op, region_name, key);
            span.record("quorate.region", region_name.as_str());
            if let Some(n) = &target.namespace {
                span.record("db.namespace", n.as_str());
            }
            if let Some(c) = &target.collection {
                span.record("db.collection.name", c.as_str());
                span.record("otel.name", format!("{operation} {c}"));
            }
            if let Some(a) = &target.server_address {
                span.record("server.address", a.as_str());
            }
            if let Some(p) = target.server_port {
                span.record("server.port", p);
            }
        }
        let result = self
            .attempt_inner(started, region, kind, timestamps, deadline, request)
            .instrument(span.clone())
            .await;
        let error_type = result
            .as_ref()
            .err()
            .map(|e| e.code().unwrap_or(e.reason()));
        if let Err(e) = &result {
            if let Some(code) = e.code() {
                span.record("db.response.status_code", code);
            }
            span.record("error.type", e.code().unwrap_or(e.reason()));
        }
        inner
            .metrics
            .attempt(op, (Instant::now() - started).as_secs_f64(), error_type);
        result
    }

    async fn attempt_inner<T, F>(
        &self,
        started: Instant,
        region: usize,
        kind: Kind,
        timestamps: bool,
        deadline: Instant,
        request: impl FnOnce() -> F,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        let inner = &*self.inner;
        if timestamps && inner.guard.excluded(region) {
            return Err(Error::RegionUnavailable {
                region: inner.router.region(region).clone(),
                reason: "clock offset beyond the guard's limit",
            });
        }
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
        let ends = deadline.min(started + limit);
        if ends <= started {
            // Nothing is sent once the operation's deadline has passed.
            return Err(Error::Timeout {
                after: Duration::ZERO,
                sent: false,
            });
        }
        let write = kind == Kind::Write;
        let result = match inner.deadlines.run(ends, request()).await {
            Some(Ok(out)) => Ok(out),
            // A read changes nothing: none of its errors is ambiguous.
            Some(Err(e)) if !write => Err(e.for_read()),
            Some(Err(e)) => Err(e),
            None => {
                // The region's own timeout fired (not the operation's
                // deadline, which says nothing of the region): back off.
                if ends == started + limit {
                    inner.router.timed_out(region, kind);
                }
                Err(Error::Timeout {
                    after: ends - started,
                    sent: write,
                })
            }
        };
        match &result {
            // Unreachable, a read that timed out, or silence for the longest
            // attempt there is: the region is left at once. A write (or a
            // lookup, which fences through the same path) waits on a quorum
            // beyond the region: outliving its adaptive timeout says the
            // commit path is slow, not that the region is gone. It counts
            // as a soft failure (and its next timeout is doubled), so that a
            // latency spike between the other regions does not eject the
            // one that leads; a region that stopped answering altogether
            // soon gathers the consecutive failures that eject it.
            Err(e @ (Error::RegionUnavailable { .. } | Error::Timeout { .. })) => {
                if inner.router.failure(region, self.region_failed(e, kind)) {
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

    /// Whether `error`, from an attempt of `kind`, says the region failed
    /// (it is left: its circuit opens, and the operation tries elsewhere)
    /// rather than that it was slow this time.
    fn region_failed(&self, error: &Error, kind: Kind) -> bool {
        match error {
            Error::RegionUnavailable { .. } => true,
            Error::Timeout { after, .. } => {
                kind != Kind::Write || *after >= self.inner.config.attempt_timeout
            }
            _ => false,
        }
    }
}

pub(crate) fn read_kind(leader: bool) -> Kind {
    if leader {
        Kind::LeaderRead
    } else {
        Kind::FollowerRead
    }
}

/// Why an operation stopped retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The attempt cap was reached.
    Cap,
    /// The retry budget ran dry.
    Budget,
    /// The next attempt would start past the deadline.
    Deadline,
}

impl Stop {
    /// The error an operation ends with after `attempts` attempts, the last
    /// failing with `last`.
    pub(crate) fn error(self, attempts: u32, last: Error) -> Error {
        let last = Box::new(last);
        match self {
            Stop::Deadline => Error::DeadlineExceeded { attempts, last },
            Stop::Cap => Error::RetriesExhausted {
                attempts,
                budget: false,
                last,
            },
            Stop::Budget => Error::RetriesExhausted {
                attempts,
                budget: true,
                last,
            },
        }
    }
}

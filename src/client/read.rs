//! Reads: planning, the freshness check and escalation, hedging.

use super::*;

/// Hedged reads: a read that has not answered within a high percentile of
/// recent read latency goes also to the next-best eligible region.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hedge {
    /// The percentile of recent read latencies to wait before hedging.
    pub percentile: f64,
    /// The shortest delay (also used until enough latencies are known).
    #[serde(with = "crate::settings::human")]
    pub min_delay: Duration,
    /// The longest delay.
    #[serde(with = "crate::settings::human")]
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
    pub(crate) fn validate(&self) -> Result<(), Error> {
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
pub(crate) struct LatencyWindow {
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
    pub(crate) fn record(&self, latency: Duration) {
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
    pub(crate) fn delay(&self, hedge: &Hedge) -> Duration {
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

impl<B: Backend> Client<B> {
    /// Reads `key` under `policy` in `session`.
    ///
    /// The read is planned at the nearest replica the policy allows, its
    /// [`Freshness`](crate::Freshness) is checked against the policy and the
    /// session, and a read that misses is escalated to the leader path —
    /// never returned silently.
    ///
    /// ```
    /// use std::time::Duration;
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Client, ClientConfig, Precondition, ReadPolicy, ReplicaRole, WriteOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), quorate::Error> {
    /// let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
    /// // The local replica replays a minute late.
    /// sim.set_replication_lag("us", Duration::from_secs(60))?;
    /// let client = Client::new(sim.at("us")?, ClientConfig::default())?;
    /// let session = client.session();
    /// let written = client
    ///     .write(&session, "cart/7", "[]".into(), Precondition::IfAbsent, &WriteOptions::default())
    ///     .await?;
    /// // Read-your-writes: the lagging replica cannot serve it, so the read
    /// // is escalated, and says where it was served.
    /// let read = client.read(&session, "cart/7", ReadPolicy::Session).await?;
    /// assert_eq!(read.version(), Some(written.version));
    /// assert_eq!(read.freshness.role, ReplicaRole::Leader);
    /// # Ok(()) }
    /// ```
    pub async fn read(
        &self,
        session: &Session,
        key: &str,
        policy: ReadPolicy,
    ) -> Result<Read<Bytes>, Error> {
        let span = tracing::info_span!(
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
        let start = Instant::now();
        let deadline = start + inner.config.read_deadline;
        // The key is hashed once, for the session's floor and its
        // observation (Strong and Session reads only).
        let (floor, key_hash) = match policy {
            ReadPolicy::Strong | ReadPolicy::Session => {
                let h = crate::session::key_hash(key);
                (session.floor_of(h), Some(h))
            }
            _ => (SessionFloor::default(), None),
        };
        inner.budget.deposit();
        let mut tried = Tried::default();
        let mut leader = policy == ReadPolicy::Strong || !inner.capabilities.follower_reads;
        let mut attempt = 0;
        let mut retries = 0;
        // Leader reads that showed an older version than the session's.
        let mut behind = 0;
        loop {
            attempt += 1;
            let home = if leader && !inner.capabilities.strong_reads_anywhere {
                Some(self.home_index(key)?)
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
            let started = if attempt == 1 { start } else { Instant::now() };
            let hedgeable = home.is_none() && inner.config.hedge.is_some();
            let (result, region_index) = if hedgeable {
                // Boxed: the hedged path holds two requests at once, and
                // inline it would size every read for two.
                Box::pin(self.hedged(&plan, region_index, tried, leader, deadline, &floor)).await
            } else {
                let kind = read_kind(leader);
                let r = self
                    .attempt(
                        started,
                        region_index,
                        kind,
                        leader,
                        deadline,
                        (DbOperation::Read, Some(plan.key)),
                        || inner.backend.read(&plan),
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
                        if let Some(h) = key_hash {
                            // The point the read reflects covers the version
                            // it saw: once the key leaves the session's token,
                            // the session point still holds it.
                            session.observe_of(h, read.observed(), read.freshness.point);
                        }
                        record_read(&inner.backend, &read, attempt);
                        return Ok(read);
                    }
                    Check::Escalate(reason) if !leader => {
                        inner.metrics.escalation(policy, reason);
                        leader = true;
                        continue;
                    }
                    Check::Behind { required } => {
                        // A linearizable read older than the session: once
                        // through another region (a deposed leaseholder may
                        // have served it), then the token is what is wrong.
                        behind += 1;
                        if behind > 1 {
                            let error = Error::SessionAhead {
                                key: key.to_owned(),
                                required,
                                found: read.observed(),
                            };
                            tracing::Span::current().record("quorate.outcome", error.reason());
                            return Err(error);
                        }
                        tried.add(region_index);
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
            if let Err(stop) = self.before_retry(&error, attempt, retries, deadline).await {
                let error = stop.error(attempt, error);
                tracing::Span::current().record("quorate.outcome", error.reason());
                return Err(error);
            }
        }
    }

    fn check(
        &self,
        policy: ReadPolicy,
        floor: &SessionFloor,
        read: &Read<Bytes>,
        region: usize,
    ) -> Check {
        self.check_freshness(policy, floor, read.observed(), &read.freshness, region)
    }

    /// Whether a read served with freshness `f` meets `policy` and the
    /// session's `floor`; `observed` is the version of the key it saw
    /// (point reads), checked against the floor's version.
    fn check_freshness(
        &self,
        policy: ReadPolicy,
        floor: &SessionFloor,
        observed: Option<crate::Version>,
        f: &crate::Freshness,
        region: usize,
    ) -> Check {
        let inner = &*self.inner;
        if let Some(min) = floor.version {
            if observed.is_none_or(|v| v < min) {
                return if f.role == ReplicaRole::Leader {
                    Check::Behind { required: min }
                } else {
                    Check::Escalate("replica older than the session's version")
                };
            }
        }
        if f.role == ReplicaRole::Leader {
            // A leader whose clock the guard distrusts may have committed
            // writes in the future or may still serve an expired lease.
            let served_by = inner.router.index_of(&f.region).unwrap_or(region);
            if inner.guard.excluded(served_by) {
                return Check::Retry("served by a leader whose clock is excluded");
            }
            // Cut off from most regions, the client cannot judge any clock,
            // and a leader's lease rests on its own.
            if inner.guard.out_of_sight() {
                return Check::Retry("the leader's clock cannot be checked against most regions");
            }
            return Check::Accept;
        }
        match policy {
            ReadPolicy::Strong => Check::Escalate("strong read served by a follower"),
            // A key the token tracks needs its version (checked above);
            // any other key, the session point, which covers every key the
            // session has seen.
            ReadPolicy::Session => match (floor.version, floor.point, f.point) {
                (Some(_), _, _) | (None, None, _) => Check::Accept,
                (None, Some(min), Some(p)) if p >= min => Check::Accept,
                (None, Some(_), Some(_)) => Check::Escalate("replica behind the session point"),
                (None, Some(_), None) => Check::Escalate("replica states no point"),
            },
            ReadPolicy::BoundedStaleness(_) if inner.guard.excluded(region) => {
                Check::Escalate("replica's clock is excluded")
            }
            ReadPolicy::BoundedStaleness(bound) => {
                let local = inner.config.clock.now_nanos();
                match (
                    f.staleness_bound,
                    inner.guard.staleness_error(region, local, bound.duration()),
                ) {
                    (Some(s), Some(error))
                        if s + inner.config.clock_uncertainty + error <= bound.duration() =>
                    {
                        Check::Accept
                    }
                    (Some(_), Some(_)) => Check::Escalate("replica beyond the staleness bound"),
                    (None, _) => Check::Escalate("replica states no staleness bound"),
                    (Some(_), None) => {
                        Check::Escalate("the clocks behind the staleness bound cannot be verified")
                    }
                }
            }
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
                    Instant::now(),
                    first,
                    read_kind(leader),
                    leader,
                    deadline,
                    (DbOperation::Read, Some(plan.key)),
                    || inner.backend.read(plan),
                )
                .await;
            return (r, first);
        };
        let delay = inner.hedge_delays.delay(hedge);
        let primary = self.attempt(
            Instant::now(),
            first,
            read_kind(leader),
            leader,
            deadline,
            (DbOperation::Read, Some(plan.key)),
            || inner.backend.read(plan),
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
            Instant::now(),
            second,
            kind,
            leader,
            deadline,
            (DbOperation::Read, Some(second_plan.key)),
            || inner.backend.read(&second_plan),
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
}

fn record_read<B: Backend>(backend: &B, read: &Read<Bytes>, attempt: u32) {
    record_freshness(backend, &read.freshness, attempt);
}

fn record_freshness<B: Backend>(backend: &B, f: &crate::Freshness, attempt: u32) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("quorate.region", f.region.as_str());
    span.record("quorate.replica", f.role.label());
    if let Some(p) = f.point {
        span.record(
            "quorate.read_point",
            tracing::field::display(ShownPoint { backend, point: p }),
        );
    }
    if let Some(s) = f.staleness_bound {
        span.record("quorate.staleness_ms", s.as_millis() as u64);
    }
    span.record("quorate.attempt", attempt);
    span.record("quorate.outcome", "ok");
}

/// Where and how a query a backend runs is to be served (see
/// [`Client::query`]): the client chose the region and the replica role,
/// and the backend reports the freshness it served it with.
#[derive(Clone, Debug)]
pub struct QueryPlan<'a> {
    /// The region to serve it from (its gateway or its replicas).
    pub region: &'a Region,
    /// Leader (linearizable) or follower.
    pub role: ReplicaRole,
    /// The policy the caller asked for (a follower may map it natively,
    /// e.g. `with_max_staleness`).
    pub policy: ReadPolicy,
    /// The session's point: a follower read behind it does not meet a
    /// session query (a backend may use it natively, e.g.
    /// `with_min_timestamp`; the client checks the result regardless).
    pub min_point: Option<crate::Point>,
    /// The caller's deadline.
    pub deadline: Instant,
}

/// A point as its database shows it ([`Client::show_point`]).
pub struct ShownPoint<'a, B> {
    backend: &'a B,
    point: crate::Point,
}

impl<B: Backend> std::fmt::Display for ShownPoint<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt_point(self.point, f)
    }
}

impl<B: Backend> std::fmt::Debug for ShownPoint<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt_point(self.point, f)
    }
}

impl<B: Backend> Client<B> {
    /// `point` (a [`Freshness`](crate::Freshness)'s, a commit's) shown the
    /// way its database shows positions: on PostgreSQL a WAL position such
    /// as `0/3000060`, which `pg_current_wal_lsn()` and the server's logs
    /// use; elsewhere `wall.logical`.
    ///
    /// ```
    /// # use quorate::sim::{Sim, SimConfig};
    /// # use quorate::{Client, ClientConfig, Point};
    /// # let sim = Sim::new(SimConfig::new(["eu"]).unwrap()).unwrap();
    /// # let client = Client::new(sim.at("eu").unwrap(), ClientConfig::default()).unwrap();
    /// let shown = client.show_point(Point::hlc(1_700_000_000_000_000_000, 2)).to_string();
    /// assert_eq!(shown, "1700000000000000000.0000000002");
    /// ```
    pub fn show_point(&self, point: crate::Point) -> ShownPoint<'_, B> {
        ShownPoint {
            backend: &self.inner.backend,
            point,
        }
    }
}

/// The result of a query: what the backend returned and the freshness it
/// was served with.
#[derive(Clone, Debug)]
pub struct Queried<T> {
    /// The rows, items or whatever the query returned.
    pub rows: T,
    /// Where and how fresh it was served.
    pub freshness: crate::Freshness,
}

impl<B: Backend> Client<B> {
    /// Runs a read the backend provides beyond point reads — an SQL
    /// query, a `Query` of a partition, a scan — under `policy` in
    /// `session`, with the guarantees of [`Client::read`]: planned at the
    /// nearest replica the policy allows, its [`Freshness`](crate::Freshness)
    /// checked against the policy and the session's point (a session
    /// query reads at least what the session wrote or saw), escalated to
    /// the leader path when it misses, retried elsewhere on failure within
    /// the read deadline, and the session advanced to the point it
    /// reflects. `run` serves one [`QueryPlan`] and reports the freshness
    /// it served it with; adapters wrap it (`quorate-cockroach`'s
    /// `SqlQuery`, say). `home_key` names the key whose home region serves
    /// strong queries where strong reads go to a key's home (a
    /// partition's key); elsewhere it may be `None`.
    pub async fn query<T, F, Fut>(
        &self,
        session: &Session,
        policy: ReadPolicy,
        home_key: Option<&str>,
        mut run: F,
    ) -> Result<Queried<T>, Error>
    where
        F: FnMut(QueryPlan<'_>) -> Fut,
        Fut: std::future::Future<Output = Result<(T, crate::Freshness), Error>>,
    {
        let span = tracing::info_span!(
            "quorate.query",
            db.operation.name = "query",
            quorate.policy = policy.label(),
            quorate.region = Empty,
            quorate.replica = Empty,
            quorate.read_point = Empty,
            quorate.staleness_ms = Empty,
            quorate.attempt = Empty,
            quorate.outcome = Empty,
        );
        async {
            let inner = &*self.inner;
            let start = Instant::now();
            let deadline = start + inner.config.read_deadline;
            let tracked = matches!(policy, ReadPolicy::Strong | ReadPolicy::Session);
            let floor = SessionFloor {
                point: if tracked { session.point() } else { None },
                version: None,
            };
            inner.budget.deposit();
            let mut tried = Tried::default();
            let mut leader = policy == ReadPolicy::Strong || !inner.capabilities.follower_reads;
            let mut attempt = 0;
            let mut retries = 0;
            loop {
                attempt += 1;
                let region_index = if leader && !inner.capabilities.strong_reads_anywhere {
                    let key = home_key.ok_or_else(|| {
                        Error::InvalidInput(
                            "a strong query on this backend needs the key whose home region serves it"
                                .into(),
                        )
                    })?;
                    self.home_index(key)?
                } else if leader {
                    inner
                        .router
                        .pick(inner.router.local(), Kind::LeaderRead, tried, |r| {
                            inner.guard.excluded(r)
                        })
                } else {
                    let lagging = match policy {
                        ReadPolicy::BoundedStaleness(b) => inner.router.lagging_beyond(b.duration()),
                        _ => Tried::default(),
                    };
                    inner
                        .router
                        .pick(inner.router.local(), Kind::FollowerRead, tried, |r| {
                            lagging.contains(r)
                        })
                };
                let plan = QueryPlan {
                    region: inner.router.region(region_index),
                    role: if leader {
                        ReplicaRole::Leader
                    } else {
                        ReplicaRole::Follower
                    },
                    policy,
                    min_point: floor.point,
                    deadline,
                };
                let started = if attempt == 1 { start } else { Instant::now() };
                let result = self
                    .attempt(
                        started,
                        region_index,
                        read_kind(leader),
                        leader,
                        deadline,
                        (DbOperation::Read, None),
                        || run(plan),
                    )
                    .await;
                let error = match result {
                    Ok((rows, freshness)) => {
                        match self.check_freshness(policy, &floor, None, &freshness, region_index) {
                            Check::Accept => {
                                inner.metrics.read(
                                    region_index,
                                    policy,
                                    freshness.role == ReplicaRole::Leader,
                                );
                                if tracked {
                                    session.observe_point(freshness.point);
                                }
                                record_freshness(&inner.backend, &freshness, attempt);
                                return Ok(Queried { rows, freshness });
                            }
                            Check::Escalate(reason) if !leader => {
                                inner.metrics.escalation(policy, reason);
                                leader = true;
                                continue;
                            }
                            Check::Escalate(reason) | Check::Retry(reason) => {
                                Error::FreshnessUnmet {
                                    key: home_key.unwrap_or("(query)").to_owned(),
                                    policy,
                                    reason,
                                }
                            }
                            Check::Behind { .. } => Error::FreshnessUnmet {
                                key: home_key.unwrap_or("(query)").to_owned(),
                                policy,
                                reason: "behind the session",
                            },
                        }
                    }
                    // A read changes nothing: none of its errors is
                    // ambiguous.
                    Err(e) => e.for_read(),
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
                if let Err(stop) = self.before_retry(&error, attempt, retries, deadline).await {
                    let error = stop.error(attempt, error);
                    tracing::Span::current().record("quorate.outcome", error.reason());
                    return Err(error);
                }
            }
        }
        .instrument(span)
        .await
    }
}

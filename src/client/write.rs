//! Writes: idempotent retries, ambiguity resolution, read-after-write checks.

use super::*;

/// Which regions a read-after-write check reads back in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyRegions {
    /// This process's region.
    Local,
    /// Every region of the topology.
    All,
    /// Every region the client currently routes to: its circuit admits
    /// requests and, for strong checks, the clock guard trusts it. (With
    /// none, the local region's readers, wherever they are routed.)
    Healthy,
    /// The regions named.
    These(Vec<Region>),
}

/// A read-after-write check: after commit, read back where the next reader
/// will read until the committed version is visible, or fail with
/// [`Error::NotVisible`] at the deadline.
///
/// The checks are reads like any other: they go through the router and the
/// clock guard. The check for a region whose circuit is open or whose clock
/// the guard distrusts when it starts reads where that region's readers are
/// routed instead; a region is never asked while it is excluded.
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

impl<B: Backend> Client<B> {
    /// Writes `key` if `precondition` holds, in `session`.
    ///
    /// Retryable failures are retried with backoff under one idempotency
    /// key until the write's deadline; an ambiguous outcome is resolved by
    /// looking that key up (which also fences earlier attempts), never by
    /// re-executing blindly. A write whose outcome stays unknown ends with
    /// [`Error::OutcomeUnknown`], naming the key to retry with. With
    /// [`WriteOptions::verify`] the write returns only once the version is
    /// visible where the next reader reads.
    ///
    /// ```
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Client, ClientConfig, Error, Precondition, WriteOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), quorate::Error> {
    /// let client = Client::new(Sim::new(SimConfig::new(["eu"])?)?.at("eu")?, ClientConfig::default())?;
    /// let session = client.session();
    /// let options = WriteOptions::default();
    /// let first = client
    ///     .write(&session, "balance/42", "100".into(), Precondition::IfAbsent, &options)
    ///     .await?;
    /// // A write based on what was read applies only if nobody wrote since.
    /// client
    ///     .write(&session, "balance/42", "70".into(), Precondition::IfVersion(first.version), &options)
    ///     .await?;
    /// let stale = client
    ///     .write(&session, "balance/42", "90".into(), Precondition::IfVersion(first.version), &options)
    ///     .await;
    /// assert!(matches!(stale, Err(Error::Conflict { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn write(
        &self,
        session: &Session,
        key: &str,
        value: Bytes,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        self.mutate(session, key, Mutation::Put(&value), precondition, options)
            .await
    }

    /// Deletes `key` if `precondition` holds, in `session`, with the same
    /// guarantees as [`Client::write`]: one idempotency key across
    /// retries, ambiguity resolved, the session advanced, an optional
    /// read-after-write check.
    ///
    /// The delete is a version of the key (a tombstone): reads report it
    /// in [`Read::deleted`](crate::Read::deleted), `IfVersion` of the
    /// deleted version no longer holds, and a record written later with
    /// `IfAbsent` continues from it. Deleting an absent record also
    /// succeeds, as a new tombstone.
    pub async fn delete(
        &self,
        session: &Session,
        key: &str,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        self.mutate(session, key, Mutation::Delete, precondition, options)
            .await
    }

    async fn mutate(
        &self,
        session: &Session,
        key: &str,
        mutation: Mutation<'_>,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        let operation = if mutation.is_delete() {
            "delete"
        } else {
            "write"
        };
        let span = tracing::info_span!(
            "quorate.write",
            db.operation.name = operation,
            quorate.region = Empty,
            quorate.attempt = Empty,
            quorate.outcome = Empty,
        );
        let recorder = span.clone();
        async {
            // Checked before anything is sent: a write must not commit and
            // then fail on its own options.
            let verify_regions = match &options.verify {
                Some(v) => Some(self.verify_regions(v)?),
                None => None,
            };
            let one = One {
                key,
                mutation,
                precondition,
            };
            let committed = self.write_inner(&one, options).await;
            let committed = match committed {
                Ok(c) => c,
                Err(e) => {
                    recorder.record("quorate.outcome", e.reason());
                    return Err(e);
                }
            };
            session.observe(key, Some(committed.version), Some(committed.point));
            recorder.record("quorate.region", committed.region.as_str());
            if let Some(wait) = self.commit_wait(committed.point) {
                // Boxed, as are the other paths most writes never take, so
                // that they do not size every write's future.
                Box::pin(tokio::time::sleep(wait)).await;
            }
            if let (Some(verify), Some(regions)) = (&options.verify, verify_regions) {
                Box::pin(self.verify(key, &committed, verify, regions)).await?;
            }
            recorder.record("quorate.outcome", "ok");
            Ok(committed)
        }
        .instrument(span)
        .await
    }

    /// The retry loop of one logical write (a single record's or a
    /// multi-record one's): idempotent attempts, sticky ambiguity and its
    /// resolution through the idempotency record.
    pub(super) async fn write_inner<W: Logical<B>>(
        &self,
        write: &W,
        options: &WriteOptions,
    ) -> Result<W::Outcome, Error> {
        let inner = &*self.inner;
        let key = write.key();
        let start = Instant::now();
        let deadline = start + options.deadline.unwrap_or(inner.config.write_deadline);
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
        // An attempt was sent whose outcome is still unknown: the write now
        // ends with its real outcome or as unknown, never as a failure.
        let mut unresolved = false;
        // Where writes go to a key's home region (multi-writer tables), each
        // region keeps its own idempotency records: while an attempt is
        // unresolved, only its region can tell (or dedupe) it, so later
        // attempts stay there rather than fail over and apply it twice.
        let mut pinned: Option<usize> = None;
        loop {
            attempt += 1;
            tracing::Span::current().record("quorate.attempt", attempt);
            let region_index = match pinned {
                Some(r) => r,
                None => self.write_region(key, tried)?,
            };
            let region = inner.router.region(region_index);
            let sent = if attempt == 1 { start } else { Instant::now() };
            let result = self
                .attempt(
                    sent,
                    region_index,
                    Kind::Write,
                    true,
                    deadline,
                    (write.operation(), Some(write.key())),
                    || write.send(&inner.backend, region, idem, deadline),
                )
                .await;
            let error = match result {
                Ok(committed) => {
                    self.count_write(W::region(&committed));
                    return Ok(committed);
                }
                Err(e) => e,
            };
            // A region that failed is not asked again by this write; one
            // that was only slow is, with a longer timeout (a write that
            // outlived its adaptive timeout waited on the quorum behind the
            // region, which another gateway reaches no faster).
            if self.region_failed(&error, Kind::Write) {
                tried.add(region_index);
            }
            match error.retryability() {
                Retryability::Permanent => {
                    // A conflict is definite even after an unknown attempt:
                    // backends look the idempotency key up before they report
                    // one, and a write of this key that has not applied yet
                    // would meet the same moved-on version.
                    if matches!(error, Error::Conflict { .. }) {
                        inner.metrics.conflict();
                        return Err(error);
                    }
                    if matches!(error, Error::IdempotencyKeyReused { .. }) {
                        return Err(error);
                    }
                    if unresolved {
                        return Err(self.outcome_unknown(key, idem, attempt, error));
                    }
                    return Err(error);
                }
                Retryability::Ambiguous => {
                    match Box::pin(self.resolve(write, idem, region_index, deadline)).await {
                        Ok(Some(committed)) => {
                            self.count_write(W::region(&committed));
                            return Ok(committed);
                        }
                        // Not applied, and fenced: no earlier attempt can
                        // commit any more.
                        Ok(None) => {
                            unresolved = false;
                            pinned = None;
                        }
                        // The key names another record: no attempt of this
                        // write could have applied.
                        Err(e @ Error::IdempotencyKeyReused { .. }) => return Err(e),
                        // Any other failure to resolve leaves the outcome
                        // unknown, however permanent the lookup's error.
                        Err(_) => {
                            unresolved = true;
                            if !inner.capabilities.writes_anywhere {
                                pinned = Some(region_index);
                            }
                        }
                    }
                }
                Retryability::Retryable => {}
            }
            retries += 1;
            if let Err(stop) = self.before_retry(&error, attempt, retries, deadline).await {
                return Err(if unresolved {
                    self.outcome_unknown(key, idem, attempt, error)
                } else {
                    stop.error(attempt, error)
                });
            }
        }
    }

    fn outcome_unknown(
        &self,
        key: &str,
        idem: &IdempotencyKey,
        attempts: u32,
        last: Error,
    ) -> Error {
        Error::OutcomeUnknown {
            key: key.to_owned(),
            idempotency_key: idem.clone(),
            attempts,
            last: Box::new(last),
        }
    }

    fn count_write(&self, region: &Region) {
        if let Some(i) = self.inner.router.index_of(region) {
            self.inner.metrics.write(i);
        }
    }

    fn write_region(&self, key: &str, tried: Tried) -> Result<usize, Error> {
        let inner = &*self.inner;
        if !inner.capabilities.writes_anywhere {
            let home = self.home_index(key)?;
            let failed_over = inner
                .config
                .home_failover
                .zip(inner.router.down_for(home))
                .is_some_and(|(after, down)| down >= after);
            if !failed_over {
                return Ok(home);
            }
            return Ok(inner.router.pick(home, Kind::Write, tried.with(home), |r| {
                inner.guard.excluded(r)
            }));
        }
        Ok(inner
            .router
            .pick(inner.router.local(), Kind::Write, tried, |r| {
                inner.guard.excluded(r)
            }))
    }

    /// Resolves an ambiguous attempt sent to `sent_to` through the
    /// idempotency record: `Some` when the logical write committed, `None`
    /// when it did not (and the backend's lookup fenced every earlier
    /// attempt). An error when no lookup succeeded before the deadline.
    ///
    /// Where writes go to a key's home region (multi-writer tables), a
    /// region's idempotency record and fence say nothing about another
    /// region's attempts: the lookup asks the region the attempt was sent
    /// to, and nowhere else.
    async fn resolve<W: Logical<B>>(
        &self,
        write: &W,
        idem: &IdempotencyKey,
        sent_to: usize,
        deadline: Instant,
    ) -> Result<Option<W::Outcome>, Error> {
        let inner = &*self.inner;
        let key = write.key();
        let mut tried = Tried::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let region_index = if inner.capabilities.writes_anywhere {
                self.write_region(key, tried)?
            } else {
                sent_to
            };
            let region = inner.router.region(region_index);
            // Timed as a write: a lookup that finds nothing commits a fence
            // through the same path as the write it resolves.
            let result = self
                .attempt(
                    Instant::now(),
                    region_index,
                    Kind::Write,
                    true,
                    deadline,
                    (DbOperation::Lookup, Some(write.key())),
                    || write.look_up(&inner.backend, region, idem),
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
                    if self.region_failed(&e, Kind::Write) {
                        tried.add(region_index);
                    }
                    let wake = Instant::now() + self.jitter(attempt);
                    if wake >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }

    /// How long to hold a write's acknowledgement so that a strong read
    /// that starts after it, through any gateway whose clock the guard
    /// trusts, sees the write or finds it uncertain. Needed only when the
    /// commit timestamp is ahead of true time (this process's clock
    /// corrected by the regions' median offset, or uncorrected without a
    /// majority of fresh samples) by more than the readers' uncertainty
    /// window covers (a leaseholder whose clock runs fast); `None`
    /// otherwise, and for backends without a clock bound.
    pub(super) fn commit_wait(&self, point: Point) -> Option<Duration> {
        let inner = &*self.inner;
        let max_offset = inner.capabilities.max_clock_offset?;
        let limit = inner.guard.limit()?;
        let local = inner.config.clock.now_nanos();
        // Without fresh samples from a majority of regions, this process's
        // own clock is the estimate.
        let now = inner.guard.true_time(local).unwrap_or(local);
        // A trusted reader's timestamp is at least `now - limit`, and its
        // uncertainty window reaches `max_offset` above that.
        let covered =
            now.saturating_sub(crate::clock::nanos(limit)) + crate::clock::nanos(max_offset);
        let ahead = point.wall.checked_sub(covered)?;
        (ahead > 0).then(|| Duration::from_nanos(ahead))
    }

    /// The regions a read-after-write check reads back in, checked before
    /// the write is sent.
    pub(super) fn verify_regions(&self, verify: &Verify) -> Result<Vec<usize>, Error> {
        let inner = &*self.inner;
        let leader = verify.policy == ReadPolicy::Strong;
        Ok(match &verify.regions {
            VerifyRegions::Local => vec![inner.router.local()],
            VerifyRegions::All => (0..inner.router.len()).collect(),
            VerifyRegions::Healthy => {
                let healthy: Vec<usize> = (0..inner.router.len())
                    .filter(|&r| self.routable(r, leader))
                    .collect();
                if healthy.is_empty() {
                    vec![inner.router.local()]
                } else {
                    healthy
                }
            }
            VerifyRegions::These(list) => list
                .iter()
                .map(|r| {
                    inner.router.index_of(r).ok_or_else(|| {
                        Error::Topology(crate::TopologyError::UnknownRegion(r.clone()))
                    })
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a request may be sent to `region` now: its circuit admits
    /// requests and, for one that assigns timestamps, the clock guard trusts
    /// it.
    fn routable(&self, region: usize, leader: bool) -> bool {
        self.inner.router.healthy(region) && !(leader && self.inner.guard.excluded(region))
    }

    /// Reads the committed version back where the next reader will read,
    /// through the same router, guard, breakers and attempt timeouts as
    /// reads. The readers of a region the router excludes when the check
    /// starts (open circuit, or a clock the guard distrusts) are routed
    /// elsewhere, and so is its check. A region that fails during the check
    /// is not swapped for another: it is waited for (never asked while
    /// excluded) until the deadline.
    pub(super) async fn verify(
        &self,
        key: &str,
        committed: &Committed,
        verify: &Verify,
        regions: Vec<usize>,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        let start = Instant::now();
        let deadline = start + verify.deadline;
        let leader = verify.policy == ReadPolicy::Strong;
        let kind = read_kind(leader);
        let mut checked = Tried::default();
        for region_index in regions {
            let mut poll = Duration::from_millis(2);
            let redirected = !self.routable(region_index, leader);
            loop {
                let serving = if leader && !inner.capabilities.strong_reads_anywhere {
                    Some(self.home_index(key)?)
                } else if redirected {
                    // Where this region's readers are routed now.
                    Some(
                        inner
                            .router
                            .pick(region_index, kind, Tried::default(), |r| {
                                leader && inner.guard.excluded(r)
                            }),
                    )
                } else {
                    Some(region_index)
                }
                .filter(|&r| self.routable(r, leader));
                let seen = match serving {
                    Some(serving) if checked.contains(serving) => break,
                    Some(serving) => {
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
                        let read = self
                            .attempt(
                                Instant::now(),
                                serving,
                                kind,
                                leader,
                                deadline,
                                (DbOperation::Read, Some(plan.key)),
                                || inner.backend.read(&plan),
                            )
                            .await;
                        let visible = read.is_ok_and(|read| {
                            // A leader whose clock the guard distrusts
                            // proves nothing about what others will read.
                            let trusted = read.freshness.role != ReplicaRole::Leader
                                || inner
                                    .router
                                    .index_of(&read.freshness.region)
                                    .is_none_or(|r| !inner.guard.excluded(r));
                            trusted && read.observed().is_some_and(|v| v >= committed.version)
                        });
                        if visible {
                            checked.add(serving);
                        }
                        visible
                    }
                    // Excluded for now: not asked.
                    None => false,
                };
                if seen {
                    break;
                }
                if Instant::now() >= deadline {
                    let region = serving.unwrap_or(region_index);
                    return Err(self.not_visible(key, committed, region, start));
                }
                // The last look is at the deadline itself.
                tokio::time::sleep_until((Instant::now() + poll).min(deadline)).await;
                poll = (poll * 2).min(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn not_visible(
        &self,
        key: &str,
        committed: &Committed,
        region: usize,
        start: Instant,
    ) -> Error {
        let inner = &*self.inner;
        inner.metrics.verify_failure();
        let region = inner.router.region(region).clone();
        tracing::warn!(
            quorate.region = region.as_str(),
            "read-after-write check failed"
        );
        Error::NotVisible {
            key: key.to_owned(),
            version: committed.version,
            region,
            waited: Instant::now() - start,
        }
    }
}

/// One logical write as the retry loop sees it: a single record's or a
/// multi-record one's.
pub(crate) trait Logical<B: Backend>: Sync {
    /// What it commits.
    type Outcome: Send;

    /// The kind of request its attempts send.
    fn operation(&self) -> DbOperation;

    /// The key whose home region the write goes to where writes go to a
    /// key's home (every record of a multi-record write shares it), and
    /// that names the write in errors.
    fn key(&self) -> &str;

    /// One attempt through `region`.
    fn send<'a>(
        &'a self,
        backend: &'a B,
        region: &'a Region,
        idem: &'a IdempotencyKey,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<Self::Outcome, Error>> + Send + 'a;

    /// The outcome recorded for `idem`, read (and fenced) through `region`.
    fn look_up<'a>(
        &'a self,
        backend: &'a B,
        region: &'a Region,
        idem: &'a IdempotencyKey,
    ) -> impl std::future::Future<Output = Result<Option<Self::Outcome>, Error>> + Send + 'a;

    /// Where an outcome committed.
    fn region(outcome: &Self::Outcome) -> &Region;
}

/// A write of one record.
struct One<'a> {
    key: &'a str,
    mutation: Mutation<'a>,
    precondition: Precondition,
}

impl<B: Backend> Logical<B> for One<'_> {
    type Outcome = Committed;

    fn operation(&self) -> DbOperation {
        DbOperation::Write
    }

    fn key(&self) -> &str {
        self.key
    }

    async fn send(
        &self,
        backend: &B,
        region: &Region,
        idem: &IdempotencyKey,
        deadline: Instant,
    ) -> Result<Committed, Error> {
        {
            let request = WriteRequest {
                key: self.key,
                mutation: self.mutation,
                precondition: self.precondition,
                idempotency_key: Some(idem),
                region,
                deadline,
            };
            backend.write(&request).await
        }
    }

    fn look_up<'a>(
        &'a self,
        backend: &'a B,
        region: &'a Region,
        idem: &'a IdempotencyKey,
    ) -> impl std::future::Future<Output = Result<Option<Committed>, Error>> + Send + 'a {
        backend.lookup(region, self.key, idem)
    }

    fn region(outcome: &Committed) -> &Region {
        &outcome.region
    }
}

//! Writes: idempotent retries, ambiguity resolution, read-after-write checks.

use super::*;

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

impl<B: Backend> Client<B> {
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
        let recorder = span.clone();
        async {
            let committed = self.write_inner(key, &value, precondition, options).await;
            let committed = match committed {
                Ok(c) => c,
                Err(e) => {
                    recorder.record("quorate.outcome", e.reason());
                    return Err(e);
                }
            };
            session.observe(key, Some(committed.version), Some(committed.point));
            recorder.record("quorate.region", committed.region.as_str());
            if let Some(verify) = &options.verify {
                // Boxed, as are the other paths most writes never take, so
                // that they do not size every write's future.
                Box::pin(self.verify(key, &committed, verify)).await?;
            }
            recorder.record("quorate.outcome", "ok");
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
            let sent = if attempt == 1 { start } else { Instant::now() };
            let result = self
                .attempt(sent, region_index, Kind::Write, true, deadline, || {
                    inner.backend.write(&request)
                })
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
                    if let Some(committed) =
                        Box::pin(self.resolve(key, idem, deadline, &error)).await?
                    {
                        self.count_write(&committed);
                        return Ok(committed);
                    }
                }
                Retryability::Retryable => {}
            }
            retries += 1;
            Box::pin(self.before_retry(&error, attempt, retries, deadline)).await?;
        }
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
                    Instant::now(),
                    region_index,
                    Kind::LeaderRead,
                    true,
                    deadline,
                    || inner.backend.lookup(region, key, idem),
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
                let seen = match inner
                    .deadlines
                    .run(deadline, inner.backend.read(&plan))
                    .await
                {
                    Some(Ok(read)) => read.version().is_some_and(|v| v >= committed.version),
                    Some(Err(_)) | None => false,
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
}

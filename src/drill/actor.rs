//! Drill actors: one recorded process using either the naive or the strict
//! client, possibly hopping between regions in one session.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::deploy::Deployment;
use super::naive::{NaiveClient, NaiveReads};
use super::Configuration;
use crate::backend::{Backend, IdempotencyKey, ReadPlan, WriteRequest};
use crate::client::{Client, ClientConfig, Verify, VerifyRegions, WriteOptions};
use crate::history::{HistoryPolicy, Recorder};
use crate::policy::ReadPolicy;
use crate::record::{Committed, Precondition, ReplicaRole, Version};
use crate::session::{Session, SessionFloor};
use crate::sim::Sim;
use crate::topology::Region;

/// Outcome counts and latencies of one run.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) latencies: Vec<Duration>,
}

/// Everything the actors of one run share.
pub(crate) struct Stage<D: Deployment = Sim> {
    pub(crate) deployment: D,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) config: Configuration,
    pub(crate) naive_reads: NaiveReads,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) seed: u64,
    pub(crate) strict: Arc<Mutex<Vec<Client<D::Backend>>>>,
    /// Mechanisms the strict actors go without.
    pub(crate) without: Vec<super::Mechanism>,
    /// What every key and idempotency key of the run begins with
    /// ([`Deployment::key_prefix`]).
    pub(crate) prefix: Arc<str>,
}

impl<D: Deployment> Clone for Stage<D> {
    fn clone(&self) -> Self {
        Stage {
            deployment: self.deployment.clone(),
            recorder: self.recorder.clone(),
            config: self.config,
            naive_reads: self.naive_reads,
            start: self.start,
            end: self.end,
            stats: self.stats.clone(),
            seed: self.seed,
            strict: self.strict.clone(),
            without: self.without.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

impl<D: Deployment> Stage<D> {
    /// `key` (or an idempotency key) as this run writes it.
    pub(crate) fn prefixed<'a>(&self, key: &'a str) -> std::borrow::Cow<'a, str> {
        if self.prefix.is_empty() {
            std::borrow::Cow::Borrowed(key)
        } else {
            std::borrow::Cow::Owned(format!("{}{key}", self.prefix))
        }
    }

    /// A strict client for `region`, kept so the runner can refresh its
    /// health in the background.
    fn strict_client(&self, region: &str, salt: u64, attempts: Option<u32>) -> Client<D::Backend> {
        let backend = self.deployment.at(region).expect("scenario regions exist");
        let mut config = ClientConfig {
            seed: Some(self.seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            clock: self
                .deployment
                .clock(region)
                .expect("scenario regions exist"),
            region_ejection: Duration::from_secs(3),
            read_deadline: Duration::from_secs(3),
            write_deadline: Duration::from_secs(4),
            home_failover: self
                .without(super::Mechanism::HomeWrites)
                .then_some(Duration::ZERO),
            ..ClientConfig::default()
        };
        config.retry.max_attempts = attempts;
        let client = Client::new(backend, config).expect("valid drill configuration");
        self.strict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client.clone());
        client
    }

    pub(crate) fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Whether the strict actors go without `mechanism`.
    pub(crate) fn without(&self, mechanism: super::Mechanism) -> bool {
        self.without.contains(&mechanism)
    }
}

/// How long a direct request waits for its answer.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A direct request, given up on after [`DIRECT_TIMEOUT`] with its outcome
/// unknown.
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, crate::Error>>,
) -> Result<T, crate::Error> {
    tokio::time::timeout(DIRECT_TIMEOUT, request)
        .await
        .unwrap_or(Err(crate::Error::Timeout {
            after: DIRECT_TIMEOUT,
            sent: true,
        }))
}

enum Driver<D: Deployment> {
    Naive(NaiveClient<D::Backend>),
    Strict(Client<D::Backend>),
    /// Straight to the database through one region's gateway: a service
    /// that does not use quorate, the same in both configurations.
    Direct(D::Backend, Region),
}

/// One process of the history: a user or service in one or more regions,
/// with one session.
pub(crate) struct Actor<D: Deployment = Sim> {
    stage: Stage<D>,
    process: u64,
    name: String,
    drivers: Vec<Driver<D>>,
    /// The region of each driver: where the client is when it uses it.
    regions: Vec<String>,
    /// The session each service holds for this user (strict drivers).
    sessions: Vec<Option<Session>>,
    /// The service the user's last operation went to.
    current: usize,
    writes: u64,
    /// Where the strict client checks its writes (read-after-write).
    verify_regions: VerifyRegions,
}

/// A successful read as an actor sees it.
pub(crate) struct Seen {
    pub(crate) version: Option<Version>,
    pub(crate) value: Option<Bytes>,
}

impl<D: Deployment> Actor<D> {
    /// An actor in `regions` (it uses them in turn, one per operation, with
    /// one session).
    pub(crate) fn new(stage: &Stage<D>, regions: &[&str]) -> Actor<D> {
        Actor::with_attempts(stage, regions, None)
    }

    /// An actor whose strict client makes at most `attempts` attempts per
    /// operation (`None`: as many as the deadline allows), as a service
    /// that leaves retries to its own callers does.
    pub(crate) fn with_attempts(
        stage: &Stage<D>,
        regions: &[&str],
        attempts: Option<u32>,
    ) -> Actor<D> {
        let process = stage.recorder.process();
        let drivers = regions
            .iter()
            .map(|r| match stage.config {
                Configuration::Naive => Driver::Naive(NaiveClient::new(
                    stage.deployment.at(r).expect("scenario regions exist"),
                    stage.naive_reads,
                )),
                Configuration::Strict => Driver::Strict(stage.strict_client(r, process, attempts)),
            })
            .collect::<Vec<_>>();
        let sessions = drivers
            .iter()
            .map(|d| match d {
                Driver::Strict(c) => Some(c.session()),
                Driver::Naive(_) | Driver::Direct(..) => None,
            })
            .collect();
        Actor {
            stage: stage.clone(),
            process,
            name: format!("s{process}"),
            drivers,
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            sessions,
            current: 0,
            writes: 0,
            verify_regions: VerifyRegions::Healthy,
        }
    }

    /// Checks the strict client's writes in `regions` instead of every
    /// healthy region.
    pub(crate) fn verifying(mut self, regions: VerifyRegions) -> Actor<D> {
        self.verify_regions = regions;
        self
    }

    /// An actor that writes straight to the database through `region`'s
    /// gateway, in both configurations, as a service that does not use
    /// quorate does: one attempt per write, with an idempotency key.
    pub(crate) fn direct(stage: &Stage<D>, region: &str) -> Actor<D> {
        let process = stage.recorder.process();
        let sim = stage.deployment.at(region).expect("scenario regions exist");
        let region = Region::new(region).expect("scenario regions are valid");
        Actor {
            stage: stage.clone(),
            process,
            name: format!("s{process}"),
            regions: vec![region.as_str().to_owned()],
            drivers: vec![Driver::Direct(sim, region)],
            sessions: vec![None],
            current: 0,
            writes: 0,
            verify_regions: VerifyRegions::Healthy,
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.stage.running()
    }

    fn finish(&self, started: Instant, ok: bool) {
        let mut s = self.stage.stats.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            s.succeeded += 1;
            s.latencies.push(Instant::now() - started);
        } else {
            s.failed += 1;
        }
    }

    /// Carries the session token to the service in region `turn` as a
    /// header would (encode, then resume there). Without session tokens,
    /// that service continues the session it held.
    fn hand_over(&mut self, turn: usize) {
        if let Some(region) = self.regions.get(turn) {
            self.stage.recorder.locate(self.process, region);
        }
        let from = std::mem::replace(&mut self.current, turn);
        if from == turn || self.stage.without(super::Mechanism::SessionTokens) {
            return;
        }
        if let (Some(Some(session)), Some(Driver::Strict(client))) =
            (self.sessions.get(from), self.drivers.get(turn))
        {
            let header = client.encode_token(session);
            if let Ok(resumed) = client.resume_session(&header) {
                self.sessions[turn] = Some(resumed);
            }
        }
    }

    /// Reads `key` in the region at `turn` (modulo the actor's regions). The
    /// strict client reads under `policy`; the naive one reads the way it
    /// always does, and the history records `label` as its intent.
    pub(crate) async fn read(
        &mut self,
        turn: usize,
        key: &str,
        policy: ReadPolicy,
        label: HistoryPolicy,
    ) -> Option<Seen> {
        let key = self.stage.prefixed(key);
        let key = key.as_ref();
        let turn = turn % self.drivers.len();
        self.hand_over(turn);
        let history_policy = match self.stage.config {
            Configuration::Naive => label,
            Configuration::Strict => policy.into(),
        };
        self.stage
            .recorder
            .invoke_read(self.process, &self.name, key, history_policy);
        let started = Instant::now();
        // Without strong reads, critical records are read as a session
        // read would: the history keeps the intent.
        let policy = match policy {
            ReadPolicy::Strong if self.stage.without(super::Mechanism::StrongReads) => {
                ReadPolicy::Session
            }
            other => other,
        };
        let result = match (&self.drivers[turn], &self.sessions[turn]) {
            (Driver::Naive(c), _) => c.read(key).await,
            (Driver::Strict(c), Some(s)) => c.read(s, key, policy).await,
            (Driver::Strict(c), None) => c.read(&c.session(), key, policy).await,
            (Driver::Direct(sim, region), _) => {
                timed(sim.read(&ReadPlan {
                    key,
                    region,
                    role: ReplicaRole::Leader,
                    policy: ReadPolicy::Strong,
                    floor: SessionFloor::default(),
                    deadline: Instant::now() + DIRECT_TIMEOUT,
                }))
                .await
            }
        };
        let outcome = result.as_ref().ok().map(|r| {
            (
                r.observed().map_or(0, |v| v.0),
                Some(r.freshness.region.as_str()),
            )
        });
        self.stage
            .recorder
            .complete_read(self.process, &self.name, key, outcome);
        self.finish(started, result.is_ok());
        result.ok().map(|r| Seen {
            version: r.version(),
            value: r.value.map(|v| v.value),
        })
    }

    /// Reads `key` strongly and writes `value` on top of what it saw (the
    /// read-modify-write every service does); returns the commit, if any.
    pub(crate) async fn update(&mut self, key: &str, value: &str) -> Option<Committed> {
        let seen = self
            .read(0, key, ReadPolicy::Strong, HistoryPolicy::Strong)
            .await?;
        let precondition = match seen.version {
            Some(v) => Precondition::IfVersion(v),
            None => Precondition::IfAbsent,
        };
        self.write(0, key, value, precondition, None).await
    }

    /// Writes `key` in the region at `turn`. `idem` names the logical write
    /// (a state transition); when `None` a fresh one is made.
    pub(crate) async fn write(
        &mut self,
        turn: usize,
        key: &str,
        value: &str,
        precondition: Precondition,
        idem: Option<String>,
    ) -> Option<Committed> {
        self.mutate(turn, key, Some(value), precondition, idem)
            .await
    }

    /// Writes several records at once in the region at `turn`, each a
    /// put of `value` (or a delete with `None`) under its precondition.
    pub(crate) async fn transact(
        &mut self,
        turn: usize,
        records: &[(String, Option<String>, Precondition)],
    ) -> Option<crate::Transacted> {
        let turn = turn % self.drivers.len();
        self.hand_over(turn);
        self.writes += 1;
        let idem = format!("{}{}-w{}", self.stage.prefix, self.name, self.writes);
        let records: Vec<(String, Option<String>, Precondition)> = records
            .iter()
            .map(|(k, v, p)| (self.stage.prefixed(k).into_owned(), v.clone(), *p))
            .collect();
        let values: Vec<Option<Bytes>> = records
            .iter()
            .map(|(_, v, _)| v.as_ref().map(|v| Bytes::from(v.clone())))
            .collect();
        let ops: Vec<crate::TxOp<'_>> = records
            .iter()
            .zip(&values)
            .map(|((key, _, precondition), value)| match value {
                Some(v) => crate::TxOp::put(key, v, *precondition),
                None => crate::TxOp::delete(key, *precondition),
            })
            .collect();
        let first = ops.first().map_or("", |op| op.key).to_owned();
        self.stage.recorder.invoke_txn(
            self.process,
            &self.name,
            crate::history::tx_records(&ops),
            Some(&idem),
        );
        let started = Instant::now();
        let verify = (!self.stage.without(super::Mechanism::Verify)).then(|| Verify {
            regions: self.verify_regions.clone(),
            policy: ReadPolicy::Strong,
            deadline: Duration::from_secs(1),
        });
        let result = match (&self.drivers[turn], &self.sessions[turn]) {
            (Driver::Naive(c), _) => c.transact(&ops).await,
            (Driver::Direct(sim, region), _) => match IdempotencyKey::new(&idem) {
                Ok(idem) => {
                    timed(sim.transact(&crate::TransactRequest {
                        ops: &ops,
                        idempotency_key: Some(&idem),
                        region,
                        deadline: Instant::now() + DIRECT_TIMEOUT,
                    }))
                    .await
                }
                Err(e) => Err(e),
            },
            (Driver::Strict(c), session) => {
                let options = WriteOptions {
                    verify,
                    idempotency_key: IdempotencyKey::new(&idem).ok(),
                    deadline: None,
                };
                let own;
                let session = match session {
                    Some(s) => s,
                    None => {
                        own = c.session();
                        &own
                    }
                };
                c.transact(session, &ops, &options).await
            }
        };
        self.stage
            .recorder
            .complete_txn(self.process, &self.name, &first, &result);
        self.finish(started, result.is_ok());
        result.ok()
    }

    /// Deletes `key` in the region at `turn`, as [`Actor::write`] writes.
    pub(crate) async fn delete(
        &mut self,
        turn: usize,
        key: &str,
        precondition: Precondition,
    ) -> Option<Committed> {
        self.mutate(turn, key, None, precondition, None).await
    }

    async fn mutate(
        &mut self,
        turn: usize,
        key: &str,
        value: Option<&str>,
        precondition: Precondition,
        idem: Option<String>,
    ) -> Option<Committed> {
        let key = self.stage.prefixed(key);
        let key = key.as_ref();
        let turn = turn % self.drivers.len();
        self.hand_over(turn);
        self.writes += 1;
        let idem = match idem {
            Some(idem) => self.stage.prefixed(&idem).into_owned(),
            None => format!("{}{}-w{}", self.stage.prefix, self.name, self.writes),
        };
        let expect = precondition.expected();
        let recorder = &self.stage.recorder;
        match value {
            Some(_) => recorder.invoke_write(self.process, &self.name, key, expect, Some(&idem)),
            None => recorder.invoke_delete(self.process, &self.name, key, expect, Some(&idem)),
        }
        let started = Instant::now();
        let value = value.map(|v| Bytes::from(v.to_owned()));
        let mutation = match &value {
            Some(v) => crate::Mutation::Put(v),
            None => crate::Mutation::Delete,
        };
        let verify = (!self.stage.without(super::Mechanism::Verify)).then(|| Verify {
            regions: self.verify_regions.clone(),
            policy: ReadPolicy::Strong,
            deadline: Duration::from_secs(1),
        });
        let result = match (&self.drivers[turn], &self.sessions[turn]) {
            (Driver::Naive(c), _) => match value.clone() {
                Some(v) => c.write(key, v, precondition).await,
                None => c.delete(key, precondition).await,
            },
            // The request's own timeout, as any driver has: the simulator
            // leaves deadlines to its callers.
            (Driver::Direct(sim, region), _) => match IdempotencyKey::new(&idem) {
                Ok(idem) => {
                    timed(sim.write(&WriteRequest {
                        key,
                        mutation,
                        precondition,
                        idempotency_key: Some(&idem),
                        region,
                        deadline: Instant::now() + DIRECT_TIMEOUT,
                    }))
                    .await
                }
                Err(e) => Err(e),
            },
            (Driver::Strict(c), session) => {
                let options = WriteOptions {
                    verify,
                    idempotency_key: IdempotencyKey::new(&idem).ok(),
                    deadline: None,
                };
                let own;
                let session = match session {
                    Some(s) => s,
                    None => {
                        own = c.session();
                        &own
                    }
                };
                match value.clone() {
                    Some(v) => c.write(session, key, v, precondition, &options).await,
                    None => c.delete(session, key, precondition, &options).await,
                }
            }
        };
        match value {
            Some(_) => self.stage.recorder.complete_write(
                self.process,
                &self.name,
                key,
                expect.is_some(),
                &result,
            ),
            None => self
                .stage
                .recorder
                .complete_delete(self.process, &self.name, key, &result),
        }
        self.finish(started, result.is_ok());
        result.ok()
    }
}

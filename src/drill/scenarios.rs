//! The five drills: the system, the faults and their timing, and the
//! workload. Nothing here decides an outcome: each run's anomalies come from
//! the simulator's mechanics and the client configuration.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::actor::{Actor, Stage};
use super::deploy::Deployment;
use super::naive::NaiveReads;
use crate::history::{Anomaly, HistoryPolicy};
use crate::policy::ReadPolicy;
use crate::random::SplitMix64;
use crate::record::Precondition;
use crate::sim::{Replication, Sim, SimConfig};

pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) const EU: &str = "eu-west";
pub(crate) const US: &str = "us-east";
pub(crate) const AP: &str = "ap-south";

/// A fault applied during a window of the run.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Cut every link of a region.
    Isolate(&'static str),
    /// Cut the link between two regions.
    Cut(&'static str, &'static str),
    /// Skew a region's clock by this many milliseconds.
    Skew(&'static str, i64),
    /// Add one-way latency (milliseconds) between two regions.
    Latency(&'static str, &'static str, u64),
    /// Cut the link from the first region to the second only: requests
    /// arrive, answers are lost.
    OneWay(&'static str, &'static str),
    /// A region's replica applies what it receives this many milliseconds
    /// late (a lagging replica).
    Lag(&'static str, u64),
    /// A region's node crashes, and restarts when the window ends.
    Crash(&'static str),
    /// A region's node pauses (a stopped process, a long garbage
    /// collection) and resumes when the window ends: what was sent to it
    /// or through it waits, then goes on.
    Pause(&'static str),
    /// A region's replica stops applying what it receives (a paused
    /// replay) and catches up when the window ends.
    Stall(&'static str),
    /// A region's clock drifts by this many parts per million (positive:
    /// gains); when the window ends it is stepped back (NTP corrects it).
    Drift(&'static str, i64),
    /// The lease preference moves to a region (consensus mode), as an
    /// operator's zone configuration does; it returns home when the window
    /// ends. The newest such window in force wins.
    LeaseTo(&'static str),
}

impl Fault {
    /// The regions the fault names.
    pub fn regions(&self) -> Vec<&'static str> {
        match *self {
            Fault::Isolate(r)
            | Fault::Skew(r, _)
            | Fault::Lag(r, _)
            | Fault::Crash(r)
            | Fault::Pause(r)
            | Fault::Stall(r)
            | Fault::Drift(r, _)
            | Fault::LeaseTo(r) => vec![r],
            Fault::Cut(a, b) | Fault::Latency(a, b, _) | Fault::OneWay(a, b) => vec![a, b],
        }
    }

    /// A short label for reports.
    pub fn label(&self) -> String {
        match self {
            Fault::Isolate(r) => format!("{r} isolated"),
            Fault::Cut(a, b) => format!("{a} x {b} cut"),
            Fault::Skew(r, ms) => format!("{r} clock {ms:+} ms"),
            Fault::Latency(a, b, ms) => format!("{a} <-> {b} +{ms} ms"),
            Fault::OneWay(a, b) => format!("{a} -> {b} cut"),
            Fault::Lag(r, ms) => format!("{r} replica {ms} ms behind"),
            Fault::Crash(r) => format!("{r} node down"),
            Fault::Pause(r) => format!("{r} node paused"),
            Fault::Stall(r) => format!("{r} replica stalled"),
            Fault::Drift(r, ppm) => format!("{r} clock drifts {:+} ms/s", ppm / 1000),
            Fault::LeaseTo(r) => format!("lease to {r}"),
        }
    }
}

/// A fault and the part of the run it covers.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// When it starts, from the start of the run.
    pub from: Duration,
    /// When it is lifted.
    pub until: Duration,
    /// What it is.
    pub fault: Fault,
}

/// One drill, to run on the simulator or on another [`Deployment`].
pub struct Scenario<D: Deployment = Sim> {
    /// Its name (`--scenario`).
    pub name: &'static str,
    /// The anomaly the naive configuration must expose.
    pub about: Anomaly,
    /// What happens, in a sentence.
    pub story: &'static str,
    /// What the naive configuration does.
    pub naive: &'static str,
    /// What prevents the anomaly in the strict configuration.
    pub mechanism: &'static str,
    /// How long the workload runs.
    pub duration: Duration,
    /// The faults.
    pub windows: Vec<Window>,
    pub(crate) naive_reads: NaiveReads,
    pub(crate) system: fn(u64) -> SimConfig,
    pub(crate) workload: fn(&Stage<D>) -> Vec<Task>,
}

impl<D: Deployment> Scenario<D> {
    /// The simulated system the scenario is written for, with `seed`: its
    /// regions, home region, replication and clocks. A deployment of real
    /// servers needs at least its regions.
    pub fn simulated_system(&self, seed: u64) -> SimConfig {
        (self.system)(seed)
    }
}

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn window(from: f64, until: f64, fault: Fault) -> Window {
    Window {
        from: s(from),
        until: s(until),
        fault,
    }
}

pub(crate) fn three_regions(seed: u64, home: &str) -> SimConfig {
    let mut c = SimConfig::new([EU, US, AP]).expect("valid regions");
    c.home = crate::Region::new(home).expect("valid region");
    c.seed = seed;
    c
}

/// Every drill, in order.
pub fn scenarios() -> Vec<Scenario> {
    scenarios_on::<Sim>()
}

/// Every drill, in order, for clients of deployment `D`.
pub fn scenarios_on<D: Deployment>() -> Vec<Scenario<D>> {
    vec![
        Scenario {
            name: "isolation-latency",
            about: Anomaly::StaleRead,
            story: "ap-south is isolated while eu-west <-> us-east latency climbs to 170 ms; services keep reading critical records",
            naive: "reads critical records from the local replica",
            mechanism: "strong reads are served by the leaseholder, never by a local replica, so the isolated region's reads fail instead of going stale (--without strong-reads: the strict run reads stale records too)",
            duration: s(14.0),
            windows: vec![
                window(2.0, 12.0, Fault::Latency(EU, US, 150)),
                window(3.0, 11.0, Fault::Isolate(AP)),
            ],
            naive_reads: NaiveReads::LocalReplica,
            system: |seed| {
                let mut c = three_regions(seed, EU);
                c.replication_lag = Duration::from_millis(30);
                c
            },
            workload: |stage| {
                let mut tasks = Vec::new();
                for region in [EU, EU, US, US] {
                    tasks.push(updater(stage, &[region], 8, (100, 200)));
                }
                for region in [EU, EU, US, US, AP, AP] {
                    tasks.push(reader(stage, &[region], 8, (50, 100)));
                }
                tasks
            },
        },
        Scenario {
            name: "clock-skew-600ms",
            about: Anomaly::StaleRead,
            story: "ap-south's clock runs 300 ms, then 600 ms ahead (max_offset 500 ms) while it writes records that us-east consumes; the database trusts every clock (CockroachDB would stop ap-south's node beyond 0.8 x max_offset)",
            naive: "writes through the local gateway and reads strongly, trusting every node's clock",
            mechanism: "two mechanisms, each enough on its own: the clock guard stops using ap-south's gateway for timestamps once its offset strays, and read-after-write checks through every healthy gateway raise each gateway's hybrid-logical clock above the commit (the leaseholder's answer carries its clock), so the consumer's reads are timestamped after the write (--without clock-guard,verify: stale reads; either one off alone: clean). On a database that stops the skewed node, as CockroachDB does (--enforce-max-offset), nothing is stale: the naive producer's writes through ap-south fail instead",
            duration: s(15.0),
            windows: vec![
                window(1.0, 5.0, Fault::Skew(AP, 300)),
                window(5.0, 13.0, Fault::Skew(AP, 600)),
            ],
            naive_reads: NaiveReads::LocalGateway,
            system: |seed| {
                let mut c = three_regions(seed, EU);
                c.link_latency = Duration::from_millis(5);
                c.local_latency = Duration::from_micros(500);
                c.replication_lag = Duration::from_millis(20);
                c.enforce_max_offset = false;
                c
            },
            workload: |stage| {
                let (tx, rx) = mpsc::channel(64);
                vec![producer_with_consumer(stage, AP, 4, tx), consumer(stage, US, rx)]
            },
        },
        Scenario {
            name: "partition-global-tables",
            about: Anomaly::DuplicateApplication,
            story: "a global table (asynchronous multi-writer replication) is partitioned while customers edit orders in eu-west and workers in both regions move them from pending to processed",
            naive: "eventually consistent reads of the local replica, writes to the local region",
            mechanism: "strong reads come from the key's home region, so a worker cut off from it stops instead of reading stale orders (--without strong-reads: stale reads); writes go to the home region as conditional, idempotent writes, so a transition already made is refused there. Either one keeps an order from being processed twice (--without strong-reads,home-writes: duplicate application; either one off alone: none)",
            duration: s(12.0),
            windows: vec![window(3.0, 9.0, Fault::Cut(EU, US))],
            naive_reads: NaiveReads::LocalReplica,
            system: |seed| {
                let mut c = SimConfig::new([EU, US]).expect("valid regions");
                c.replication = Replication::MultiWriter;
                c.link_latency = Duration::from_millis(30);
                c.replication_lag = Duration::from_millis(100);
                c.seed = seed;
                c
            },
            workload: |stage| {
                let mut tasks = vec![order_producer(stage, EU, 40), order_editor(stage, EU, 40)];
                for (i, region) in [EU, EU, US, US].into_iter().enumerate() {
                    tasks.push(order_worker(stage, region, 40, i as u64));
                }
                tasks
            },
        },
        Scenario {
            name: "partial-partition-skew-250ms",
            about: Anomaly::StaleRead,
            story: "eu-west and ap-south lose their link (us-east still reaches both) while ap-south's clock runs 250 ms ahead",
            naive: "forces local reads and keeps its connections in ap-south",
            mechanism: "strong reads never come from the cut-off replica (--without strong-reads: stale reads), and a 250 ms skew is within max_offset, so reads timestamped that close to a write are uncertain and retried, not stale (--without clock-guard: still clean); for availability, non-sticky routing leaves ap-south's gateway, which cannot reach the leaseholder, for us-east: a read after one attempt timeout, a write once the gateway's circuit opens",
            duration: s(13.0),
            windows: vec![
                window(2.0, 11.0, Fault::Cut(EU, AP)),
                window(2.0, 11.0, Fault::Skew(AP, 250)),
            ],
            naive_reads: NaiveReads::LocalReplica,
            system: |seed| three_regions(seed, EU),
            workload: |stage| {
                let mut tasks = Vec::new();
                for region in [EU, EU, AP, AP] {
                    tasks.push(updater(stage, &[region], 8, (100, 200)));
                }
                for region in [AP, AP, AP, US] {
                    tasks.push(reader(stage, &[region], 8, (50, 100)));
                }
                tasks
            },
        },
        Scenario {
            name: "skew-isolate-conflicting-writes",
            about: Anomaly::MonotonicReads,
            story: "ap-south holds the lease with its clock 1.5 s behind, is isolated while both sides write the same records, then heals; users move between eu-west and ap-south; the database trusts every clock (CockroachDB would stop ap-south's node beyond 0.8 x max_offset)",
            naive: "reads the local replica wherever the user lands, with no session carried between services",
            mechanism: "session tokens travel with the user, so a replica behind the session is never read (--without session-tokens: monotonic-reads violations); the clock guard keeps the deposed leaseholder, whose clock is behind, out of strong reads (--without clock-guard: stale reads); only quorum commits succeed. On a database that stops the skewed node, as CockroachDB does (--enforce-max-offset), the naive client's operations through ap-south fail (about half of all it does) and the strict run stays clean",
            duration: s(12.0),
            windows: vec![
                window(1.0, 10.0, Fault::Skew(AP, -1500)),
                window(2.0, 8.0, Fault::Isolate(AP)),
            ],
            naive_reads: NaiveReads::LocalReplica,
            system: |seed| {
                let mut c = three_regions(seed, AP);
                c.enforce_max_offset = false;
                c
            },
            workload: |stage| {
                let mut tasks = Vec::new();
                for region in [EU, EU, AP, AP] {
                    tasks.push(updater(stage, &[region], 4, (100, 200)));
                }
                for _ in 0..3 {
                    tasks.push(roamer(stage, &[EU, AP], 4));
                }
                for _ in 0..2 {
                    tasks.push(reader(stage, &[AP], 4, (50, 100)));
                }
                tasks
            },
        },
    ]
}

pub(crate) fn pause(rng: &mut SplitMix64, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(lo + rng.below(hi - lo + 1))
}

pub(crate) fn rng_for<D: Deployment>(stage: &Stage<D>, salt: u64) -> SplitMix64 {
    SplitMix64::new(stage.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ salt)
}

/// Reads a record and writes the next version conditionally, again and again.
pub(crate) fn updater<D: Deployment>(
    stage: &Stage<D>,
    regions: &[&str],
    keys: u64,
    think: (u64, u64),
) -> Task {
    let mut actor = Actor::new(stage, regions);
    let mut rng = rng_for(stage, 0x11 + stage.recorder.process());
    Box::pin(async move {
        let mut n = 0u64;
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            n += 1;
            actor.update(&key, &format!("update-{n}")).await;
            sleep(pause(&mut rng, think)).await;
        }
    })
}

/// Reads critical records strongly.
pub(crate) fn reader<D: Deployment>(
    stage: &Stage<D>,
    regions: &[&str],
    keys: u64,
    think: (u64, u64),
) -> Task {
    let mut actor = Actor::new(stage, regions);
    let mut rng = rng_for(stage, 0x22 + stage.recorder.process());
    Box::pin(async move {
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            actor
                .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await;
            sleep(pause(&mut rng, think)).await;
        }
    })
}

/// A user whose requests land in each of `regions` in turn, in one session.
pub(crate) fn roamer<D: Deployment>(stage: &Stage<D>, regions: &[&str], keys: u64) -> Task {
    let mut actor = Actor::new(stage, regions);
    let mut rng = rng_for(stage, 0x33 + stage.recorder.process());
    Box::pin(async move {
        let mut turn = 0;
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            actor
                .read(turn, &key, ReadPolicy::Session, HistoryPolicy::Session)
                .await;
            turn += 1;
            sleep(pause(&mut rng, (80, 120))).await;
        }
    })
}

/// Updates records in `region` and tells a consumer elsewhere about each
/// committed version, as a queue would.
fn producer_with_consumer<D: Deployment>(
    stage: &Stage<D>,
    region: &str,
    keys: u64,
    tx: mpsc::Sender<String>,
) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0x44);
    Box::pin(async move {
        let mut n = 0u64;
        while actor.running() {
            let key = format!("order:{}", n % keys);
            n += 1;
            if actor.update(&key, &format!("state-{n}")).await.is_some() {
                // The notification crosses one link.
                sleep(Duration::from_millis(5)).await;
                let _ = tx.send(key).await;
            }
            sleep(pause(&mut rng, (300, 600))).await;
        }
    })
}

/// Reads each record it is told about, strongly.
fn consumer<D: Deployment>(stage: &Stage<D>, region: &str, mut rx: mpsc::Receiver<String>) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    Box::pin(async move {
        while actor.running() {
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(key)) => {
                    actor
                        .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                        .await;
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
    })
}

/// Creates `orders` pending orders, one every 50 ms.
fn order_producer<D: Deployment>(stage: &Stage<D>, region: &str, orders: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    Box::pin(async move {
        for i in 0..orders {
            let key = format!("order:{i}");
            actor
                .write(
                    0,
                    &key,
                    "pending",
                    Precondition::IfAbsent,
                    Some(format!("create-{i}")),
                )
                .await;
            sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Customers keep editing pending orders (in the home region).
fn order_editor<D: Deployment>(stage: &Stage<D>, region: &str, orders: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0x66);
    Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut n = 0u64;
        while actor.running() {
            let key = format!("order:{}", rng.below(orders));
            if let Some(seen) = actor
                .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await
            {
                let pending = seen
                    .value
                    .as_deref()
                    .is_some_and(|v| v.starts_with(b"pending"));
                if let (Some(v), true) = (seen.version, pending) {
                    n += 1;
                    actor
                        .write(
                            0,
                            &key,
                            &format!("pending-edit-{n}"),
                            Precondition::IfVersion(v),
                            None,
                        )
                        .await;
                }
            }
            sleep(pause(&mut rng, (40, 80))).await;
        }
    })
}

/// Moves orders from pending to processed, each transition once (it names
/// the transition `process-<order>`).
fn order_worker<D: Deployment>(stage: &Stage<D>, region: &str, orders: u64, salt: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let region = region.to_owned();
    let mut rng = rng_for(stage, 0x55 + salt);
    let start = stage.start + Duration::from_millis(3200);
    Box::pin(async move {
        tokio::time::sleep_until(start.max(Instant::now())).await;
        let mut order: Vec<u64> = (0..orders).collect();
        while actor.running() {
            // Each pass visits the orders in a different order.
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for &i in &order {
                if !actor.running() {
                    break;
                }
                let key = format!("order:{i}");
                let seen = actor
                    .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Eventual)
                    .await;
                if let Some(seen) = seen {
                    let pending = seen
                        .value
                        .as_deref()
                        .is_some_and(|v| v.starts_with(b"pending"));
                    if let (Some(v), true) = (seen.version, pending) {
                        actor
                            .write(
                                0,
                                &key,
                                &format!("processed-in-{region}"),
                                Precondition::IfVersion(v),
                                Some(format!("process-{i}")),
                            )
                            .await;
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

//! Chaos drills on the embedded simulator: each scenario runs twice, with
//! the naive client configuration teams run by default and with quorate's
//! strict one; every operation is recorded as a history and checked.
//!
//! A drill passes when every strict run has no anomaly and every naive run
//! exposes the anomaly its scenario is about: a drill that cannot fail
//! proves nothing.
//!
//! ```no_run
//! let results = quorate::drill::run_all(&quorate::drill::DrillOptions::default())?;
//! assert!(quorate::drill::verdict(&results));
//! # Ok::<(), quorate::Error>(())
//! ```

mod actor;
pub mod cli;
mod html;
pub mod naive;
pub mod nemesis;
mod report;
mod scenarios;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::history::{check_events, Event, Recorder, Report};
use crate::sim::Sim;
use actor::{Stage, Stats};
pub use html::html_report;
pub use report::{markdown, render_table, to_json};
pub use scenarios::{scenarios, Fault, Scenario, Window};

/// Which client configuration a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Configuration {
    /// What teams run by default.
    Naive,
    /// quorate's strict configuration.
    Strict,
}

impl Configuration {
    /// `naive` or `strict`.
    pub fn label(self) -> &'static str {
        match self {
            Configuration::Naive => "naive",
            Configuration::Strict => "strict",
        }
    }
}

/// A mechanism of the strict configuration that a run can switch off, to
/// show that it is what keeps the strict run clean: with it off, the strict
/// run of the scenario that credits it shows the anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// Strong reads (served by the leaseholder, or the home region of a
    /// global table). Off, the strict actors read critical records with
    /// `Session` reads — the nearest replica that has caught up with what
    /// the session saw — and the history keeps the strong intent.
    StrongReads,
    /// The clock guard's evidence. Off, strict clients never probe: no
    /// clock is ever excluded from assigning timestamps, and staleness
    /// claims are trusted as stated (the probes' other uses go too:
    /// replica-lag reports, and circuits closed by a probe rather than by
    /// a trial request).
    ClockGuard,
    /// Read-after-write checks. Off, a write is acknowledged once it
    /// commits, with no `Verify`.
    Verify,
    /// Session tokens carried between services. Off, each service a user
    /// reaches continues its own session instead of the user's.
    SessionTokens,
    /// Writes that stay in a key's home region (global tables). Off, a
    /// write fails over to a reachable region as soon as the home region is
    /// down (`ClientConfig::home_failover` of zero).
    HomeWrites,
}

impl Mechanism {
    /// Every mechanism, in order.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::StrongReads,
        Mechanism::ClockGuard,
        Mechanism::Verify,
        Mechanism::SessionTokens,
        Mechanism::HomeWrites,
    ];

    /// `strong-reads`, `clock-guard`, `verify`, `session-tokens` or
    /// `home-writes`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::StrongReads => "strong-reads",
            Mechanism::ClockGuard => "clock-guard",
            Mechanism::Verify => "verify",
            Mechanism::SessionTokens => "session-tokens",
            Mechanism::HomeWrites => "home-writes",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mechanism {
    type Err = Error;

    /// ```
    /// use quorate::drill::Mechanism;
    /// assert_eq!("clock-guard".parse::<Mechanism>().unwrap(), Mechanism::ClockGuard);
    /// assert!("clocks".parse::<Mechanism>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Mechanism, Error> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
                Error::InvalidInput(format!(
                    "unknown mechanism {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// How a run departs from its scenario as written (by default, not at
/// all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    /// Mechanisms the strict run goes without.
    pub without: Vec<Mechanism>,
    /// The database runs CockroachDB's own clock check
    /// ([`SimConfig::enforce_max_offset`](crate::sim::SimConfig::enforce_max_offset))
    /// even in the scenarios that model one trusting every clock: what
    /// really happens to them on CockroachDB.
    pub enforce_max_offset: bool,
}

impl Variant {
    /// The variant in words, for tables: empty for the scenario as written.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.without.is_empty() {
            let names: Vec<&str> = self.without.iter().map(|m| m.name()).collect();
            parts.push(format!("strict runs without {}", names.join(", ")));
        }
        if self.enforce_max_offset {
            parts.push("the database stops nodes beyond 0.8 x max_offset".to_owned());
        }
        parts.join("; ")
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Run only this scenario.
    pub scenario: Option<String>,
    /// The seed of every random choice.
    pub seed: u64,
    /// How the runs depart from the scenarios (not at all by default).
    pub variant: Variant,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            scenario: None,
            seed: 1,
            variant: Variant::default(),
        }
    }
}

/// Every region's clock offset from true time at one moment of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockSample {
    /// When, from the start of the run.
    pub at: Duration,
    /// Each region's offset in nanoseconds (positive: ahead).
    pub offsets: Vec<(String, i64)>,
}

/// One run: a scenario under one configuration.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The configuration.
    pub config: Configuration,
    /// The anomaly the scenario is about.
    pub about: &'static str,
    /// The checker's report.
    pub report: Report,
    /// Operations that returned success to the application.
    pub succeeded: u64,
    /// Operations that returned an error.
    pub failed: u64,
    /// Median latency of successful operations.
    pub p50: Duration,
    /// 99th-percentile latency of successful operations.
    pub p99: Duration,
    /// The recorded history.
    pub events: Vec<Event>,
    /// The faults, for reports.
    pub windows: Vec<Window>,
    /// How long the workload ran.
    pub duration: Duration,
    /// How the run departed from its scenario (naive runs have no
    /// mechanisms to go without).
    pub variant: Variant,
    /// The regions' clock offsets, sampled at the start, on both sides of
    /// every fault boundary and at the end: clocks change course only at a
    /// boundary, so the offsets between samples lie on straight lines.
    pub clocks: Vec<ClockSample>,
    /// The clock offset the database tolerates.
    pub max_offset: Duration,
}

impl RunResult {
    /// The share of operations that succeeded.
    pub fn availability(&self) -> f64 {
        let total = self.succeeded + self.failed;
        if total == 0 {
            0.0
        } else {
            self.succeeded as f64 / total as f64
        }
    }

    /// Whether this run did what the drill demands of it.
    pub fn passed(&self) -> bool {
        match self.config {
            Configuration::Strict => self.report.total() == 0 && self.report.ops > 0,
            Configuration::Naive => self.report.anomalies.get(self.about).copied().unwrap_or(0) > 0,
        }
    }
}

/// Whether every run passed (and there was at least one).
pub fn verdict(results: &[RunResult]) -> bool {
    !results.is_empty() && results.iter().all(RunResult::passed)
}

/// Runs the selected scenarios, naive then strict, each on its own paused
/// runtime (virtual time: deterministic by seed, seconds of wall time).
pub fn run_all(options: &DrillOptions) -> Result<Vec<RunResult>, Error> {
    let all = scenarios();
    let selected: Vec<&Scenario> = match &options.scenario {
        None => all.iter().collect(),
        Some(name) => {
            let found: Vec<&Scenario> = all.iter().filter(|s| s.name == name).collect();
            if found.is_empty() {
                let names: Vec<&str> = all.iter().map(|s| s.name).collect();
                return Err(Error::InvalidInput(format!(
                    "unknown scenario {name:?}; scenarios: {}",
                    names.join(", ")
                )));
            }
            found
        }
    };
    let mut results = Vec::new();
    for scenario in selected {
        for config in [Configuration::Naive, Configuration::Strict] {
            results.push(run_variant(
                scenario,
                config,
                options.seed,
                &options.variant,
            )?);
        }
    }
    Ok(results)
}

/// Runs one scenario under one configuration.
pub fn run(scenario: &Scenario, config: Configuration, seed: u64) -> Result<RunResult, Error> {
    run_variant(scenario, config, seed, &Variant::default())
}

/// Runs one scenario under one configuration, departing from it as
/// `variant` says.
pub fn run_variant(
    scenario: &Scenario,
    config: Configuration,
    seed: u64,
    variant: &Variant,
) -> Result<RunResult, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(run_on_virtual_time(scenario, config, seed, variant))
}

async fn run_on_virtual_time(
    scenario: &Scenario,
    config: Configuration,
    seed: u64,
    variant: &Variant,
) -> Result<RunResult, Error> {
    let variant = Variant {
        without: match config {
            Configuration::Strict => variant.without.clone(),
            Configuration::Naive => Vec::new(),
        },
        enforce_max_offset: variant.enforce_max_offset,
    };
    let mut system = (scenario.system)(seed);
    system.enforce_max_offset |= variant.enforce_max_offset;
    let sim = Sim::new(system)?;
    let recorder = Recorder::new();
    let start = Instant::now();
    let stage = Stage {
        sim: sim.clone(),
        recorder: recorder.clone(),
        config,
        naive_reads: scenario.naive_reads,
        start,
        end: start + scenario.duration,
        stats: Arc::new(Mutex::new(Stats::default())),
        seed,
        strict: Arc::new(Mutex::new(Vec::new())),
        without: variant.without.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in (scenario.workload)(&stage) {
        tasks.spawn(task);
    }
    // Strict clients probe every region every 250 ms, each region on its
    // own schedule (unless the clock guard is off: then they never probe).
    let clients = if stage.without(Mechanism::ClockGuard) {
        Vec::new()
    } else {
        stage
            .strict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    for client in clients {
        let end = stage.end;
        tasks.spawn(async move {
            // Biased: an unbiased select polls its branches in a random
            // order, and a seed must replay exactly.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(end) => {}
                checks = client.health_checks(Duration::from_millis(250)) => {
                    if let Err(e) = checks {
                        tracing::error!(error = %e, "drill health checks could not run");
                    }
                }
            }
        });
    }
    let clocks = Arc::new(Mutex::new(vec![sample_clocks(&sim, Duration::ZERO)]));
    tasks.spawn(apply_faults(
        sim.clone(),
        scenario.windows.clone(),
        start,
        clocks.clone(),
    ));
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::InvalidInput(format!("a drill task failed: {e}")))?;
    }
    let mut clocks = std::mem::take(&mut *clocks.lock().unwrap_or_else(|e| e.into_inner()));
    clocks.push(sample_clocks(&sim, Instant::now() - start));
    let events = recorder.events();
    let report = check_events(&events)
        .map_err(|e| Error::InvalidInput(format!("recorded history is invalid: {e}")))?;
    let stats = stage.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies = stats.latencies.clone();
    latencies.sort();
    let quantile = |q: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    Ok(RunResult {
        scenario: scenario.name,
        config,
        about: scenario.about.name(),
        succeeded: stats.succeeded,
        failed: stats.failed,
        p50: quantile(0.5),
        p99: quantile(0.99),
        report,
        events,
        windows: scenario.windows.clone(),
        duration: scenario.duration,
        variant,
        clocks,
        max_offset: sim.config().max_offset,
    })
}

/// Every region's clock offset now.
fn sample_clocks(sim: &Sim, at: Duration) -> ClockSample {
    let offsets = sim
        .config()
        .regions
        .iter()
        .filter_map(|r| {
            let offset = sim.clock_offset(r.as_str()).ok()?;
            Some((r.as_str().to_owned(), offset))
        })
        .collect();
    ClockSample { at, offsets }
}

/// Applies each fault at its start and lifts it at its end. Overlapping
/// faults compose: a link stays cut while any window cuts it (lifting one
/// cut does not heal another), skews and latencies add up, a replica lags
/// by the largest lag that covers it, a replica stays stalled and a node
/// down or paused while any window stalls, crashes or pauses it, drift rates add up (a clock is stepped back when its last
/// drift ends), and the lease preference is the newest lease window's (the
/// home region's outside them).
async fn apply_faults(
    sim: Sim,
    windows: Vec<Window>,
    start: Instant,
    clocks: Arc<Mutex<Vec<ClockSample>>>,
) {
    let sample = |at: Duration| {
        clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample_clocks(&sim, at));
    };
    let regions: Vec<String> = sim
        .config()
        .regions
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    let default_lag = sim.config().replication_lag;
    let mut times: Vec<Duration> = windows.iter().flat_map(|w| [w.from, w.until]).collect();
    times.sort();
    times.dedup();
    let mut cut: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
    let mut down: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut halted: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut frozen: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut stepped: std::collections::BTreeMap<String, (i64, i64)> =
        std::collections::BTreeMap::new();
    let home = sim.config().home.as_str().to_owned();
    let mut preferred = home.clone();
    for at in times {
        tokio::time::sleep_until(start + at).await;
        sample(at);
        let mut in_force: Vec<&Window> = windows
            .iter()
            .filter(|w| w.from <= at && at < w.until)
            .collect();
        in_force.sort_by_key(|w| w.from);
        let active: Vec<Fault> = in_force.iter().map(|w| w.fault).collect();
        let mut crashed = std::collections::BTreeSet::new();
        let mut stalled = std::collections::BTreeSet::new();
        let mut paused = std::collections::BTreeSet::new();
        let mut lease_to = home.as_str();
        let mut links = std::collections::BTreeSet::new();
        let mut skew: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        let mut latency: std::collections::BTreeMap<(&str, &str), u64> =
            std::collections::BTreeMap::new();
        let mut lag: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        let mut drift: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for fault in &active {
            match *fault {
                Fault::Isolate(r) => {
                    for o in regions.iter().filter(|o| o.as_str() != r) {
                        links.insert((r.to_owned(), o.clone()));
                        links.insert((o.clone(), r.to_owned()));
                    }
                }
                Fault::Cut(a, b) => {
                    links.insert((a.to_owned(), b.to_owned()));
                    links.insert((b.to_owned(), a.to_owned()));
                }
                Fault::OneWay(a, b) => {
                    links.insert((a.to_owned(), b.to_owned()));
                }
                Fault::Skew(r, ms) => *skew.entry(r).or_default() += ms,
                Fault::Latency(a, b, ms) => {
                    let pair = if a <= b { (a, b) } else { (b, a) };
                    *latency.entry(pair).or_default() += ms;
                }
                Fault::Lag(r, ms) => {
                    let l = lag.entry(r).or_default();
                    *l = (*l).max(ms);
                }
                Fault::Crash(r) => {
                    crashed.insert(r);
                }
                Fault::Stall(r) => {
                    stalled.insert(r);
                }
                Fault::Pause(r) => {
                    paused.insert(r);
                }
                Fault::Drift(r, ppm) => *drift.entry(r).or_default() += ppm,
                Fault::LeaseTo(r) => lease_to = r,
            }
        }
        let mut results = Vec::new();
        for r in crashed.difference(&down) {
            results.push(sim.crash(r));
        }
        for r in down.difference(&crashed) {
            results.push(sim.restart(r));
        }
        down = crashed;
        for r in stalled.difference(&halted) {
            results.push(sim.stall_replica(r));
        }
        for r in halted.difference(&stalled) {
            results.push(sim.resume_replica(r));
        }
        halted = stalled;
        for r in paused.difference(&frozen) {
            results.push(sim.pause(r));
        }
        for r in frozen.difference(&paused) {
            results.push(sim.resume(r));
        }
        frozen = paused;
        if lease_to != preferred {
            if lease_to == home {
                // The window ended: each range's own preference again.
                sim.default_lease_preferences();
            } else {
                results.push(sim.prefer_lease(lease_to));
            }
            preferred = lease_to.to_owned();
        }
        for (a, b) in links.difference(&cut) {
            results.push(sim.cut_one_way(a, b));
        }
        for (a, b) in cut.difference(&links) {
            results.push(sim.heal_one_way(a, b));
        }
        cut = links;
        for r in &regions {
            let ms = skew.get(r.as_str()).copied().unwrap_or(0);
            let ppm = drift.get(r.as_str()).copied().unwrap_or(0);
            let (was_ms, was_ppm) = stepped.get(r).copied().unwrap_or((0, 0));
            // A step when the skews change, or when a drift ends (NTP
            // steps the clock back): either corrects what it drifted.
            if ms != was_ms || (was_ppm != 0 && ppm == 0) {
                results.push(sim.set_skew(r, ms * 1_000_000));
            }
            if ppm != was_ppm {
                results.push(sim.set_drift(r, ppm));
            }
            stepped.insert(r.clone(), (ms, ppm));
            let stall = lag.get(r.as_str()).map(|&ms| Duration::from_millis(ms));
            results.push(sim.set_replication_lag(r, stall.unwrap_or(default_lag).max(default_lag)));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                let pair = if a <= b {
                    (a.as_str(), b.as_str())
                } else {
                    (b.as_str(), a.as_str())
                };
                let ms = latency.get(&pair).copied().unwrap_or(0);
                results.push(sim.set_link_latency(a, b, Duration::from_millis(ms)));
            }
        }
        for e in results.into_iter().filter_map(Result::err) {
            tracing::error!(error = %e, "drill fault could not be applied");
        }
        sample(at);
    }
}

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
mod deploy;
mod html;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod links;
pub mod naive;
pub mod nemesis;
mod own;
mod report;
mod scenarios;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::history::{check_events, Event, FaultEvent, FaultPhase, Recorder, Report};
use crate::sim::Sim;
use actor::{Stage, Stats};
pub use deploy::{refusals, Deployment, FaultState};
pub use html::html_report;
pub use own::OwnCluster;
pub use report::{markdown, render_table, to_json};
pub use scenarios::{scenarios, scenarios_on, Fault, Scenario, Window};

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
    /// Why the database itself prevents the scenario's anomaly, when the
    /// deployment says it does ([`Deployment::prevents`]): the naive run
    /// then passes by showing none of it (and fails if it shows any).
    pub prevented: Option<String>,
    /// Faults the deployment could not bring in force or lift, with when
    /// (from the start of the run): a run with any did not run its
    /// scenario, and does not pass.
    pub fault_errors: Vec<(Duration, String)>,
    /// When each fault was brought in force and lifted, on the history's
    /// clock: the history file carries them as fault lines.
    pub faults: Vec<FaultEvent>,
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
        if !self.fault_errors.is_empty() {
            return false;
        }
        match self.config {
            Configuration::Strict => self.report.total() == 0 && self.report.ops > 0,
            Configuration::Naive => {
                let seen = self.report.anomalies.get(self.about).copied().unwrap_or(0);
                match self.prevented {
                    None => seen > 0,
                    Some(_) => seen == 0 && self.report.ops > 0,
                }
            }
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
    let mut results = Vec::new();
    for scenario in &select(scenarios(), options.scenario.as_deref())? {
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

/// The scenario named `name` of `all` (every one without a name), or an
/// error naming the scenarios there are.
fn select<D: Deployment>(
    all: Vec<Scenario<D>>,
    name: Option<&str>,
) -> Result<Vec<Scenario<D>>, Error> {
    let Some(name) = name else { return Ok(all) };
    if !all.iter().any(|s| s.name == name) {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        return Err(Error::InvalidInput(format!(
            "unknown scenario {name:?}; scenarios: {}",
            names.join(", ")
        )));
    }
    Ok(all.into_iter().filter(|s| s.name == name).collect())
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
    let mut system = (scenario.system)(seed);
    system.enforce_max_offset |= variant.enforce_max_offset;
    let sim = Sim::new(system)?;
    run_deployed(&sim, scenario, config, seed, variant).await
}

/// Runs one scenario under one configuration on `deployment`, in the
/// runtime's time (real time on real servers): the workload's clients are
/// made by the deployment, and its faults are brought in force at each
/// boundary of the scenario's windows. The deployment must have the
/// scenario's regions and produce every fault its windows name.
pub async fn run_deployed<D: Deployment>(
    deployment: &D,
    scenario: &Scenario<D>,
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
    let system = (scenario.system)(seed);
    let regions = deployment.regions();
    for r in &system.regions {
        if !regions.iter().any(|d| d == r.as_str()) {
            return Err(Error::InvalidInput(format!(
                "scenario {} needs region {r}, which the deployment does not have (it has {})",
                scenario.name,
                regions.join(", ")
            )));
        }
    }
    let unsupported = deployment.unsupported(&scenario.windows);
    if !unsupported.is_empty() {
        return Err(Error::InvalidInput(format!(
            "scenario {} needs faults this deployment cannot produce: {}",
            scenario.name,
            unsupported.join("; ")
        )));
    }
    // Every client the workload will make, made here first: a deployment
    // that cannot serve a region fails the run, not the workload.
    for r in &system.regions {
        deployment.at(r.as_str())?;
        deployment.clock(r.as_str())?;
    }
    let home = system.home.as_str().to_owned();
    if let Some(theirs) = deployment.home() {
        if theirs != home {
            return Err(Error::InvalidInput(format!(
                "scenario {} places its services around home region {home}; the deployment's home is {theirs}",
                scenario.name
            )));
        }
    }
    let recorder = Recorder::new();
    let start = Instant::now();
    let stage = Stage {
        deployment: deployment.clone(),
        recorder: recorder.clone(),
        config,
        naive_reads: scenario.naive_reads,
        start,
        end: start + scenario.duration,
        stats: Arc::new(Mutex::new(Stats::default())),
        seed,
        strict: Arc::new(Mutex::new(Vec::new())),
        without: variant.without.clone(),
        prefix: deployment.key_prefix().into(),
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
    let clocks = Arc::new(Mutex::new(vec![sample_clocks(deployment, Duration::ZERO)]));
    let fault_errors = Arc::new(Mutex::new(Vec::new()));
    let fault_lines = Arc::new(Mutex::new(Vec::new()));
    let faults = tokio::spawn(apply_faults(
        deployment.clone(),
        scenario.windows.clone(),
        home,
        start,
        Applied {
            clocks: clocks.clone(),
            errors: fault_errors.clone(),
            lines: fault_lines.clone(),
            recorder: recorder.clone(),
        },
    ));
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            failed.get_or_insert(e);
        }
    }
    // Every fault is lifted before the run returns, however it ended.
    let lifted = faults.await;
    if let Some(e) = failed {
        return Err(Error::InvalidInput(format!("a drill task failed: {e}")));
    }
    lifted.map_err(|e| Error::InvalidInput(format!("the fault schedule failed: {e}")))?;
    let mut clocks = std::mem::take(&mut *clocks.lock().unwrap_or_else(|e| e.into_inner()));
    clocks.push(sample_clocks(deployment, Instant::now() - start));
    let faults_failed =
        std::mem::take(&mut *fault_errors.lock().unwrap_or_else(|e| e.into_inner()));
    let events = recorder.events();
    let faults = std::mem::take(&mut *fault_lines.lock().unwrap_or_else(|e| e.into_inner()));
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
        max_offset: deployment.max_offset(),
        prevented: deployment.prevents(scenario.name),
        fault_errors: faults_failed,
        faults,
    })
}

/// Every region's clock offset now.
fn sample_clocks<D: Deployment>(deployment: &D, at: Duration) -> ClockSample {
    let offsets = deployment
        .regions()
        .into_iter()
        .filter_map(|r| {
            let offset = deployment.clock_offset(&r)?;
            Some((r, offset))
        })
        .collect();
    ClockSample { at, offsets }
}

/// What [`apply_faults`] records as it goes.
struct Applied {
    clocks: Arc<Mutex<Vec<ClockSample>>>,
    errors: Arc<Mutex<Vec<(Duration, String)>>>,
    lines: Arc<Mutex<Vec<FaultEvent>>>,
    recorder: Arc<Recorder>,
}

/// Brings the faults in force at each boundary of `windows` (composed as
/// [`FaultState::at`] says), and lifts every one at the end.
async fn apply_faults<D: Deployment>(
    deployment: D,
    windows: Vec<Window>,
    home: String,
    start: Instant,
    applied: Applied,
) {
    let sample = |at: Duration| {
        applied
            .clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample_clocks(&deployment, at));
    };
    let regions = deployment.regions();
    let mut times: Vec<Duration> = windows.iter().flat_map(|w| [w.from, w.until]).collect();
    times.sort();
    times.dedup();
    let mut state = FaultState::default();
    for at in times {
        tokio::time::sleep_until(start + at).await;
        sample(at);
        let next = FaultState::at(&windows, at, &regions, &home);
        // The time the change began: a proxy's faults hold from then on, a
        // statement's once it has answered (within the same boundary).
        let time = applied.recorder.now();
        let failed = deployment.apply(&state, &next).await;
        let error = (!failed.is_empty()).then(|| {
            let all: Vec<String> = failed.iter().map(Error::to_string).collect();
            all.join("; ")
        });
        let mut lines = applied.lines.lock().unwrap_or_else(|e| e.into_inner());
        // What ends here, then what starts.
        for phase in [FaultPhase::Stop, FaultPhase::Start] {
            for w in &windows {
                let edge = match phase {
                    FaultPhase::Stop => w.until,
                    FaultPhase::Start => w.from,
                };
                if edge == at {
                    lines.push(FaultEvent {
                        nemesis: phase,
                        fault: w.fault.label(),
                        error: error.clone(),
                        time,
                    });
                }
            }
        }
        drop(lines);
        for e in failed {
            tracing::error!(error = %e, "drill fault could not be applied");
            applied
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((at, e.to_string()));
        }
        state = next;
        sample(at);
    }
}

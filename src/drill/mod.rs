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
pub use report::{html_report, markdown, render_table, to_json};
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

/// What to run.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Run only this scenario.
    pub scenario: Option<String>,
    /// The seed of every random choice.
    pub seed: u64,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            scenario: None,
            seed: 1,
        }
    }
}

/// One run: a scenario under one configuration.
#[derive(Debug)]
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
            results.push(run(scenario, config, options.seed)?);
        }
    }
    Ok(results)
}

/// Runs one scenario under one configuration.
pub fn run(scenario: &Scenario, config: Configuration, seed: u64) -> Result<RunResult, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(run_on_virtual_time(scenario, config, seed))
}

async fn run_on_virtual_time(
    scenario: &Scenario,
    config: Configuration,
    seed: u64,
) -> Result<RunResult, Error> {
    let sim = Sim::new((scenario.system)(seed))?;
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
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in (scenario.workload)(&stage) {
        tasks.spawn(task);
    }
    // Strict clients probe every region every 250 ms, each region on its
    // own schedule.
    let clients = stage
        .strict
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for client in clients {
        let end = stage.end;
        tasks.spawn(async move {
            tokio::select! {
                checks = client.health_checks(Duration::from_millis(250)) => {
                    if let Err(e) = checks {
                        tracing::error!(error = %e, "drill health checks could not run");
                    }
                }
                _ = tokio::time::sleep_until(end) => {}
            }
        });
    }
    tasks.spawn(apply_faults(sim.clone(), scenario.windows.clone(), start));
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| Error::InvalidInput(format!("a drill task failed: {e}")))?;
    }
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
    })
}

/// Applies each fault at its start and lifts it at its end. Overlapping
/// faults compose: a link stays cut while any window cuts it (lifting one
/// cut does not heal another), skews and latencies add up, and a replica
/// lags by the largest stall that covers it.
async fn apply_faults(sim: Sim, windows: Vec<Window>, start: Instant) {
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
    for at in times {
        tokio::time::sleep_until(start + at).await;
        let active: Vec<Fault> = windows
            .iter()
            .filter(|w| w.from <= at && at < w.until)
            .map(|w| w.fault)
            .collect();
        let mut links = std::collections::BTreeSet::new();
        let mut skew: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        let mut latency: std::collections::BTreeMap<(&str, &str), u64> =
            std::collections::BTreeMap::new();
        let mut lag: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
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
            }
        }
        let mut results = Vec::new();
        for (a, b) in links.difference(&cut) {
            results.push(sim.cut_one_way(a, b));
        }
        for (a, b) in cut.difference(&links) {
            results.push(sim.heal_one_way(a, b));
        }
        cut = links;
        for r in &regions {
            let ms = skew.get(r.as_str()).copied().unwrap_or(0);
            results.push(sim.set_skew(r, ms * 1_000_000));
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
    }
}

//! The `drill` command line, as a function so it can be tested.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{html_report, render_table, run_all, to_json, verdict, DrillOptions};
use crate::error::Error;

/// The usage line.
pub const USAGE: &str =
    "usage: drill [--json | --markdown] [--scenario NAME] [--seed N] [--without MECHANISMS] [--enforce-max-offset] [--history FILE] [--report FILE.html]\n       drill --nemesis SEEDS [--seed FIRST] [--without MECHANISMS] [--enforce-max-offset] [--expect-every-anomaly] [--json] [--history FILE] [--report FILE.html]\n       drill --backend postgres|dynamodb|spanner [--scenario NAME | --nemesis SEEDS] [--seed N] [--json] [--history FILE] [--report FILE.html]   (the quorate command, built with the backend's feature)\n       drill --backend NAME --cluster FILE --not-production [--duration D] [--strict-only] [--scenario NAME] ...   (a cluster of your own; docs/runbook-cluster-drill.md)\n  MECHANISMS: comma-separated, of strong-reads, clock-guard, verify, session-tokens, home-writes (the strict runs go without them)";

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Args {
    /// Print JSON instead of the table.
    pub json: bool,
    /// Print the README's drill section instead of the table.
    pub markdown: bool,
    /// Scenario and seed.
    pub options: DrillOptions,
    /// Where to save each run's history (`-<scenario>-<config>` is inserted
    /// before the extension).
    pub history: Option<PathBuf>,
    /// Where to write the HTML report.
    pub report: Option<PathBuf>,
    /// `--help` was asked for.
    pub help: bool,
    /// Run this many randomized fault schedules (from `--seed`) instead of
    /// the scenarios.
    pub nemesis: Option<u64>,
    /// With `--nemesis`: also fail unless every anomaly the checker knows
    /// showed in some naive run (the schedules can expose each of them).
    pub expect_every_anomaly: bool,
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--json" => parsed.json = true,
            "--markdown" => parsed.markdown = true,
            "--scenario" => parsed.options.scenario = Some(value("--scenario")?),
            "--seed" => {
                let v = value("--seed")?;
                parsed.options.seed = v.parse().map_err(|_| {
                    format!(
                        "--seed takes a whole number from 0 to {}, got {v:?}",
                        u64::MAX
                    )
                })?;
            }
            "--history" => parsed.history = Some(PathBuf::from(value("--history")?)),
            "--report" => parsed.report = Some(PathBuf::from(value("--report")?)),
            "--expect-every-anomaly" => parsed.expect_every_anomaly = true,
            "--enforce-max-offset" => parsed.options.variant.enforce_max_offset = true,
            "--without" => {
                let v = value("--without")?;
                for name in v.split(',') {
                    let m: super::Mechanism = name.parse().map_err(|e: Error| match e {
                        Error::InvalidInput(m) => format!("--without: {m}"),
                        other => format!("--without: {other}"),
                    })?;
                    if !parsed.options.variant.without.contains(&m) {
                        parsed.options.variant.without.push(m);
                    }
                }
            }
            "--nemesis" => {
                let v = value("--nemesis")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--nemesis takes a number of seeds, got {v:?}"))?;
                if n == 0 || n > 1_000_000 {
                    return Err(format!("--nemesis takes 1 to 1000000 seeds, got {n}"));
                }
                parsed.nemesis = Some(n);
            }
            "-h" | "--help" => parsed.help = true,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if let Some(n) = parsed.nemesis {
        if parsed.options.seed.checked_add(n).is_none() {
            return Err(format!(
                "--seed {} with --nemesis {n} runs past the last seed ({})",
                parsed.options.seed,
                u64::MAX
            ));
        }
    }
    Ok(parsed)
}

/// `h.jsonl` → `h-isolation-latency-naive.jsonl`.
pub fn history_path(base: &Path, scenario: &str, config: &str) -> PathBuf {
    let stem = base
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("history");
    let name = match base.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{scenario}-{config}.{ext}"),
        None => format!("{stem}-{scenario}-{config}"),
    };
    base.with_file_name(name)
}

/// Saves one run's history next to `base` (see [`history_path`]); the
/// message says which file could not be written.
fn save_history(base: &Path, scenario: &str, run: &super::RunResult) -> Result<(), String> {
    let path = history_path(base, scenario, run.config.label());
    std::fs::File::create(&path)
        .map(std::io::BufWriter::new)
        .and_then(|f| crate::history::write_jsonl_with_faults(f, &run.events, &run.faults))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Whether every strict run is clean, and there was one.
fn strict_clean(results: &[super::RunResult]) -> bool {
    let mut strict = results
        .iter()
        .filter(|r| r.config == super::Configuration::Strict)
        .peekable();
    strict.peek().is_some() && strict.all(super::RunResult::passed)
}

/// The arguments, or the exit code when there is nothing to run (0 after
/// `--help`, 2 with the usage after bad arguments).
fn parsed(
    args: impl IntoIterator<Item = String>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Args, u8> {
    match parse_args(args) {
        Ok(a) if a.help => {
            let _ = writeln!(out, "{USAGE}");
            Err(0)
        }
        Ok(a) => Ok(a),
        Err(e) => {
            let _ = writeln!(err, "drill: {e}\n{USAGE}");
            Err(2)
        }
    }
}

/// Writes the HTML report of `results` to `path`, if asked; exit code 2
/// when it cannot.
fn write_report(
    path: Option<&Path>,
    results: &[super::RunResult],
    err: &mut impl Write,
) -> Result<(), u8> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, html_report(results)).map_err(|e| {
        let _ = writeln!(err, "drill: cannot write {}: {e}", path.display());
        2
    })
}

/// Runs the command: 0 when the drill passes, 1 when it does not, 2 for
/// bad arguments or files that cannot be written.
pub fn main(
    args: impl IntoIterator<Item = String>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let args = match parsed(args, out, err) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Some(seeds) = args.nemesis {
        return nemesis(&args, seeds, out, err);
    }
    let results = match run_all(&args.options) {
        Ok(r) => r,
        Err(Error::InvalidInput(e)) => {
            let _ = writeln!(err, "drill: {e}");
            return 2;
        }
        Err(e) => {
            let _ = writeln!(err, "drill: {e}");
            return 1;
        }
    };
    if let Some(base) = &args.history {
        for r in &results {
            if let Err(e) = save_history(base, r.scenario, r) {
                let _ = writeln!(err, "drill: {e}");
                return 2;
            }
        }
    }
    if let Err(code) = write_report(args.report.as_deref(), &results, err) {
        return code;
    }
    let _ = if args.json {
        writeln!(out, "{}", to_json(&results))
    } else if args.markdown {
        write!(out, "{}", super::markdown(&results))
    } else {
        write!(out, "{}", render_table(&results))
    };
    if verdict(&results) {
        0
    } else {
        1
    }
}

/// `drill --nemesis SEEDS`: 0 when no strict run shows an anomaly.
fn nemesis(args: &Args, seeds: u64, out: &mut impl Write, err: &mut impl Write) -> u8 {
    if args.options.scenario.is_some() || args.markdown {
        let _ = writeln!(
            err,
            "drill: --nemesis runs its own schedules (no --scenario, --markdown)"
        );
        return 2;
    }
    let mut kept = Vec::new();
    let mut failed_write = None;
    let variant = &args.options.variant;
    let summary = super::nemesis::run_seeds(args.options.seed, seeds, variant, |seed, result| {
        if let Some(base) = &args.history {
            if let Err(e) = save_history(base, &format!("nemesis-{seed}"), result) {
                failed_write.get_or_insert(e);
            }
        }
        if args.report.is_some() {
            kept.push(result.clone());
        }
    });
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "drill: {e}");
            return 1;
        }
    };
    if let Some(e) = failed_write {
        let _ = writeln!(err, "drill: {e}");
        return 2;
    }
    if let Err(code) = write_report(args.report.as_deref(), &kept, err) {
        return code;
    }
    if args.json {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            summary: &'a super::nemesis::NemesisSummary,
            ok: bool,
        }
        let json = Json {
            summary: &summary,
            ok: summary.ok(),
        };
        let _ = writeln!(out, "{}", serde_json::to_string(&json).unwrap_or_default());
    } else {
        let _ = write!(out, "{}", summary.render());
    }
    let unseen = summary.unseen_by_naive();
    if args.expect_every_anomaly && !unseen.is_empty() {
        let _ = writeln!(
            err,
            "drill: no naive run showed {} (--expect-every-anomaly)",
            unseen.join(", ")
        );
        return 1;
    }
    if summary.ok() {
        0
    } else {
        1
    }
}

/// One run a deployment is asked for.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunSpec {
    /// `<scenario>-<config>`, `nemesis-<seed>-<config>` for a schedule of
    /// the nemesis: something to name a fresh table after.
    pub name: String,
    /// The scenario's regions, its home first.
    pub regions: Vec<String>,
    /// The scenario's home region, where its writes are coordinated.
    pub home: String,
}

/// `drill --backend NAME` on a deployment the caller provides: the
/// scenarios (or `--nemesis` schedules) naive and strict, each run on a
/// fresh deployment from `fresh` (given the run's name, to name a fresh
/// table after), with the options, output and exit codes of [`main`]. A
/// scenario with faults the deployment cannot produce is not run, and the
/// output says which faults and why; the verdict covers the runs made
/// (and fails when none was).
pub async fn main_deployed<D, F, Fut>(
    backend: &str,
    args: impl IntoIterator<Item = String>,
    fresh: F,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8
where
    D: super::Deployment,
    F: FnMut(RunSpec) -> Fut,
    Fut: std::future::Future<Output = Result<D, Error>>,
{
    main_deployed_with(backend, &Deployed::default(), args, fresh, out, err).await
}

/// How [`main_deployed_with`] departs from the scenarios.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Deployed {
    /// The faults come from the team's own tools (a cluster of its own):
    /// each scenario's workload runs this long with no scheduled fault,
    /// and the drill passes when every strict run is clean (the naive
    /// runs show what the faults did to a client without quorate).
    pub own_faults: Option<std::time::Duration>,
    /// Skip the naive runs.
    pub strict_only: bool,
}

impl Deployed {
    /// Faults from the team's own tools during `duration` per run.
    pub fn own_faults(duration: std::time::Duration) -> Deployed {
        Deployed {
            own_faults: Some(duration),
            strict_only: false,
        }
    }

    /// Without the naive runs.
    pub fn strict_only(mut self) -> Deployed {
        self.strict_only = true;
        self
    }
}

/// [`main_deployed`], departing from the scenarios as `how` says.
pub async fn main_deployed_with<D, F, Fut>(
    backend: &str,
    how: &Deployed,
    args: impl IntoIterator<Item = String>,
    mut fresh: F,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8
where
    D: super::Deployment,
    F: FnMut(RunSpec) -> Fut,
    Fut: std::future::Future<Output = Result<D, Error>>,
{
    use super::{nemesis, run_deployed, scenarios_on, Configuration};
    let args = match parsed(args, out, err) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.markdown {
        let _ = writeln!(err, "drill: --markdown is for the simulator's drills");
        return 2;
    }
    if args.options.variant.enforce_max_offset {
        let _ = writeln!(
            err,
            "drill: --enforce-max-offset changes the simulated database; a deployment's database enforces what it enforces"
        );
        return 2;
    }
    if how.own_faults.is_some() && args.nemesis.is_some() {
        let _ = writeln!(
            err,
            "drill: --nemesis schedules faults; with faults from your own tools, run the scenarios' workloads (--scenario NAME)"
        );
        return 2;
    }
    let mut selected: Vec<(String, super::Scenario<D>)> = match args.nemesis {
        Some(seeds) => (args.options.seed..args.options.seed + seeds)
            .map(|seed| (format!("nemesis-{seed}"), nemesis::scenario_on::<D>(seed)))
            .collect(),
        None => match super::select(scenarios_on::<D>(), args.options.scenario.as_deref()) {
            Ok(selected) => selected
                .into_iter()
                .map(|s| (s.name.to_owned(), s))
                .collect(),
            Err(e) => {
                let message = match e {
                    Error::InvalidInput(m) => m,
                    other => other.to_string(),
                };
                let _ = writeln!(err, "drill: {message}");
                return 2;
            }
        },
    };
    if let Some(duration) = how.own_faults {
        for (_, scenario) in &mut selected {
            scenario.windows.clear();
            scenario.duration = duration;
        }
    }
    let configs: &[Configuration] = if how.strict_only {
        &[Configuration::Strict]
    } else {
        &[Configuration::Naive, Configuration::Strict]
    };
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    // Nemesis schedules run with the faults the deployment can make; the
    // ones it cannot are named per seed.
    let mut restricted: Vec<(String, Vec<String>)> = Vec::new();
    for (label, scenario) in &mut selected {
        for (n, &config) in configs.iter().enumerate() {
            let seed = match args.nemesis {
                Some(_) => label
                    .strip_prefix("nemesis-")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(args.options.seed),
                None => args.options.seed,
            };
            let system = scenario.simulated_system(seed);
            let home = system.home.as_str().to_owned();
            let mut regions = vec![home.clone()];
            regions.extend(
                system
                    .regions
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .filter(|r| *r != home),
            );
            let spec = RunSpec {
                name: format!("{label}-{}", config.label()),
                regions,
                home,
            };
            let deployment = match fresh(spec).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = writeln!(err, "drill: {backend}: {e}");
                    return 1;
                }
            };
            if args.nemesis.is_some() && n == 0 {
                let (kept, dropped): (Vec<super::Window>, Vec<super::Window>) = scenario
                    .windows
                    .iter()
                    .partition(|w| deployment.unsupported(std::slice::from_ref(*w)).is_empty());
                if !dropped.is_empty() {
                    restricted.push((
                        label.clone(),
                        dropped.iter().map(|w| w.fault.label()).collect(),
                    ));
                }
                scenario.windows = kept;
            }
            let refused = deployment.unsupported(&scenario.windows);
            if !refused.is_empty() {
                skipped.push((label.clone(), refused));
                break;
            }
            let run =
                run_deployed(&deployment, scenario, config, seed, &args.options.variant).await;
            let run = match run {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(err, "drill: {backend}: {label}: {e}");
                    return 1;
                }
            };
            let _ = writeln!(
                err,
                "drill: {label} {}: {} operations, {}",
                config.label(),
                run.report.ops,
                super::report::anomalies_text(&run)
            );
            if let Some(base) = &args.history {
                if let Err(e) = save_history(base, label, &run) {
                    let _ = writeln!(err, "drill: {e}");
                    return 2;
                }
            }
            results.push(run);
        }
    }
    if let Err(code) = write_report(args.report.as_deref(), &results, err) {
        return code;
    }
    if args.json {
        let mut json = to_json(&results);
        if let Some(o) = json.as_object_mut() {
            // The verdict the exit code gives: random schedules and faults
            // of the team's own judge only the strict runs.
            let ok = match (how.own_faults, args.nemesis) {
                (None, None) => verdict(&results),
                _ => strict_clean(&results),
            };
            o.insert("ok".into(), ok.into());
            o.insert("backend".into(), backend.into());
            o.insert("own_faults".into(), how.own_faults.is_some().into());
            o.insert(
                "ran_without".into(),
                restricted
                    .iter()
                    .map(|(s, why)| serde_json::json!({ "scenario": s, "faults": why }))
                    .collect(),
            );
            o.insert(
                "not_run".into(),
                skipped
                    .iter()
                    .map(|(s, why)| serde_json::json!({ "scenario": s, "faults": why }))
                    .collect(),
            );
        }
        let _ = writeln!(out, "{json}");
    } else {
        let table = if how.own_faults.is_some() || args.nemesis.is_some() {
            super::report::table_rows(&results, true)
        } else {
            render_table(&results)
        };
        let _ = write!(out, "{table}");
        for r in &results {
            if let (super::Configuration::Naive, Some(why)) = (r.config, &r.prevented) {
                let _ = writeln!(out, "{}: {backend} prevents {}: {why}", r.scenario, r.about);
            }
        }
        for (s, dropped) in &restricted {
            let _ = writeln!(
                out,
                "{s}: ran without what {backend} cannot make: {}",
                dropped.join("; ")
            );
        }
        for (s, why) in &skipped {
            let _ = writeln!(
                out,
                "{s}: not run on {backend}, which cannot make: {}",
                why.join("; ")
            );
        }
    }
    let verdict_line = |clean: bool| {
        if clean {
            "PASS: every strict run is clean"
        } else {
            "FAIL: a strict run shows anomalies (or none ran)"
        }
    };
    let passed = match (how.own_faults, args.nemesis) {
        // Random schedules: what is demanded of them everywhere is that
        // every strict run is clean; the naive runs show what the faults
        // did.
        (None, Some(seeds)) => {
            let clean = strict_clean(&results);
            if !args.json {
                let mut naive: std::collections::BTreeMap<&str, u64> = Default::default();
                for r in results.iter().filter(|r| r.config == Configuration::Naive) {
                    for (k, v) in &r.report.anomalies {
                        *naive.entry(k).or_default() += v;
                    }
                }
                let naive: Vec<String> = naive
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let ran = results
                    .iter()
                    .filter(|r| r.config == Configuration::Strict)
                    .count();
                let naive = if naive.is_empty() {
                    "none".to_owned()
                } else {
                    naive.join(" ")
                };
                let _ = writeln!(
                    out,
                    "nemesis on {backend}: {ran} of {seeds} seeds run, naive anomalies: {naive}; {}",
                    verdict_line(clean)
                );
            }
            clean
        }
        // The faults were the team's: what is demanded is that quorate
        // kept every strict run clean through them.
        (Some(d), _) => {
            let clean = strict_clean(&results);
            if !args.json {
                let _ = writeln!(
                    out,
                    "faults: from your own tools, during the {} s of each run; {}",
                    d.as_secs(),
                    verdict_line(clean)
                );
            }
            clean
        }
        (None, None) => verdict(&results),
    };
    if passed {
        0
    } else {
        1
    }
}

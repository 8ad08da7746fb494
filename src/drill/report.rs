//! Drill output: the table, the Markdown and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{verdict, Configuration, RunResult};
use crate::history::ANOMALIES;

pub(super) fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

pub(super) fn anomalies_text(r: &RunResult) -> String {
    let found: Vec<String> = ANOMALIES
        .iter()
        .filter_map(|name| {
            let n = r.report.anomalies.get(name).copied().unwrap_or(0);
            (n > 0).then(|| format!("{name}={n}"))
        })
        .collect();
    if found.is_empty() {
        "none".into()
    } else {
        found.join(" ")
    }
}

pub(super) fn verdict_text(r: &RunResult) -> String {
    if let Some((at, e)) = r.fault_errors.first() {
        return format!("FAIL: a fault failed at {:.1} s: {e}", at.as_secs_f64());
    }
    match (r.config, r.passed()) {
        (Configuration::Naive, true) if r.prevented.is_some() => {
            "ok: the database prevents it".into()
        }
        (Configuration::Naive, false) if r.prevented.is_some() => {
            format!("FAIL: shows {}, said to be prevented", r.about)
        }
        (Configuration::Naive, true) => format!("ok: exposes {}", r.about),
        (Configuration::Naive, false) => format!("FAIL: does not expose {}", r.about),
        (Configuration::Strict, true) => "ok: no anomaly".into(),
        (Configuration::Strict, false) => "FAIL: anomalies".into(),
    }
}

/// The results as a text table, one row per run.
pub fn render_table(results: &[RunResult]) -> String {
    let mut s = table_rows(results, false);
    let _ = writeln!(
        s,
        "\n{}",
        if verdict(results) {
            "PASS: every strict run is clean and every naive run exposes its anomaly"
        } else {
            "FAIL: see the verdict column"
        }
    );
    s
}

/// The table without its verdict line; with `own_faults` (faults from the
/// team's own tools, not a schedule), naive runs are shown, not judged.
pub(super) fn table_rows(results: &[RunResult], own_faults: bool) -> String {
    let mut s = String::new();
    let width = results
        .iter()
        .map(|r| anomalies_text(r).len())
        .max()
        .unwrap_or(0)
        .max(9);
    let _ = writeln!(
        s,
        "{:<32} {:<6} {:>6} {:>7} {:>8} {:>8}  {:<width$}  verdict",
        "scenario", "config", "ops", "avail", "p50 ms", "p99 ms", "anomalies"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<32} {:<6} {:>6} {:>6.1}% {:>8.1} {:>8.1}  {:<width$}  {}",
            r.scenario,
            r.config.label(),
            r.report.ops,
            r.availability() * 100.0,
            ms(r.p50),
            ms(r.p99),
            anomalies_text(r),
            match r.config {
                Configuration::Naive if own_faults => "shown, not judged".to_owned(),
                _ => verdict_text(r),
            }
        );
    }
    if let Some(variant) = results
        .iter()
        .map(|r| r.variant.describe())
        .filter(|d| !d.is_empty())
        .max_by_key(|d| d.len())
    {
        let _ = writeln!(s, "\n{variant}");
    }
    s
}

/// The README's drill section: the table, then per scenario what the naive
/// configuration does, the mechanism that prevents the anomaly and what it
/// costs, with this run's numbers.
pub fn markdown(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "```text\n{}```\n", render_table(results));
    for scenario in super::scenarios() {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.scenario == scenario.name)
            .collect();
        let (Some(naive), Some(strict)) = (
            runs.iter().find(|r| r.config == Configuration::Naive),
            runs.iter().find(|r| r.config == Configuration::Strict),
        ) else {
            continue;
        };
        let _ = writeln!(s, "**`{}`** — {}.", scenario.name, scenario.story);
        let _ = writeln!(
            s,
            "- Naive ({}): {} `{}` in {} operations.",
            scenario.naive,
            naive
                .report
                .anomalies
                .get(naive.about)
                .copied()
                .unwrap_or(0),
            naive.about,
            naive.report.ops
        );
        let _ = writeln!(s, "- Strict: {}.", scenario.mechanism);
        let _ = writeln!(
            s,
            "- Cost: availability {:.1}% → {:.1}%, p50 {:.1} → {:.1} ms, p99 {:.1} → {:.1} ms.\n",
            naive.availability() * 100.0,
            strict.availability() * 100.0,
            ms(naive.p50),
            ms(strict.p50),
            ms(naive.p99),
            ms(strict.p99)
        );
    }
    s
}

/// The results as the drill's JSON document.
pub fn to_json(results: &[RunResult]) -> serde_json::Value {
    let scenarios: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let anomalies: BTreeMap<&str, u64> = ANOMALIES
                .iter()
                .map(|n| (*n, r.report.anomalies.get(n).copied().unwrap_or(0)))
                .collect();
            serde_json::json!({
                "name": r.scenario,
                "config": r.config.label(),
                "ops": r.report.ops,
                "anomalies": anomalies,
                "availability": r.availability(),
                "p50_ms": ms(r.p50),
                "p99_ms": ms(r.p99),
                "without": r.variant.without.iter().map(|m| m.name()).collect::<Vec<_>>(),
                "enforce_max_offset": r.variant.enforce_max_offset,
                "prevented": r.prevented,
                "fault_errors": r.fault_errors.iter().map(|(at, e)| serde_json::json!({"at_ms": ms(*at), "error": e})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "scenarios": scenarios, "ok": verdict(results) })
}

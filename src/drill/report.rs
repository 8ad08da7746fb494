//! Drill output: the table, the JSON document and the HTML page.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use super::{verdict, Configuration, RunResult};
use crate::history::{EventType, OpKind, ANOMALIES};

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn anomalies_text(r: &RunResult) -> String {
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

fn verdict_text(r: &RunResult) -> String {
    match (r.config, r.passed()) {
        (Configuration::Naive, true) => format!("ok: exposes {}", r.about),
        (Configuration::Naive, false) => format!("FAIL: does not expose {}", r.about),
        (Configuration::Strict, true) => "ok: no anomaly".into(),
        (Configuration::Strict, false) => "FAIL: anomalies".into(),
    }
}

/// The results as a text table, one row per run.
pub fn render_table(results: &[RunResult]) -> String {
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
            verdict_text(r)
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
            })
        })
        .collect();
    serde_json::json!({ "scenarios": scenarios, "ok": verdict(results) })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where each read was served and whether the checker flagged it.
struct ReadMark {
    time: u64,
    region: Option<String>,
    flagged: bool,
}

fn read_marks(r: &RunResult) -> Vec<ReadMark> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut next = 0usize;
    let mut marks = Vec::new();
    for e in &r.events {
        if e.kind == EventType::Invoke {
            open.insert(e.process, next);
            next += 1;
            continue;
        }
        let Some(index) = open.remove(&e.process) else {
            continue;
        };
        if e.op != OpKind::Read {
            continue;
        }
        marks.push(ReadMark {
            time: e.time,
            region: if e.kind == EventType::Ok {
                e.region.clone()
            } else {
                None
            },
            flagged: r.report.flagged.get(index).copied().unwrap_or(false),
        });
    }
    marks
}

fn timeline(r: &RunResult) -> String {
    let marks = read_marks(r);
    let mut rows: Vec<String> = marks.iter().filter_map(|m| m.region.clone()).collect();
    rows.sort();
    rows.dedup();
    rows.push("failed".into());
    let (left, width, row_h, top) = (110.0, 760.0, 34.0, 24.0);
    let height = top + row_h * rows.len() as f64 + 26.0;
    let total = r.duration.as_nanos().max(1) as f64;
    let x = |t: f64| left + width * (t / total).min(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img">"#,
        w = left + width + 20.0
    );
    for (i, w) in r.windows.iter().enumerate() {
        let (x0, x1) = (x(w.from.as_nanos() as f64), x(w.until.as_nanos() as f64));
        let y = top - 18.0 + (i % 2) as f64 * 9.0;
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#f2c14e" fill-opacity="0.18"/><text x="{x0:.1}" y="{y:.1}" font-size="10" fill="#8a6d00">{}</text>"##,
            x1 - x0,
            row_h * rows.len() as f64,
            escape(&w.fault.label())
        );
    }
    for (i, name) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="4" y="{:.1}" font-size="12">{}</text>"##,
            left + width,
            y + row_h / 2.0,
            y + row_h / 2.0,
            y + row_h / 2.0 + 4.0,
            escape(name)
        );
    }
    for m in &marks {
        let row = match &m.region {
            Some(region) => rows
                .iter()
                .position(|r| r == region)
                .unwrap_or(rows.len() - 1),
            None => rows.len() - 1,
        };
        let colour = match (&m.region, m.flagged) {
            (None, _) => "#999999",
            (Some(_), true) => "#d7263d",
            (Some(_), false) => "#2e933c",
        };
        let y = top + row_h * row as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{y:.1}" y2="{1:.1}" stroke="{colour}" stroke-width="1"/>"#,
            x(m.time as f64),
            y + row_h - 12.0
        );
    }
    let seconds = r.duration.as_secs();
    for s in 0..=seconds {
        let xs = x(s as f64 * 1e9);
        let _ = write!(
            svg,
            r##"<text x="{xs:.1}" y="{:.1}" font-size="10" fill="#555" text-anchor="middle">{s}s</text>"##,
            height - 8.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One self-contained HTML page: per run, a timeline of reads per region
/// (green fresh, red flagged by the checker, grey failed), the fault windows
/// shaded, and the anomaly table.
pub fn html_report(results: &[RunResult]) -> String {
    let mut s = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>quorate drills</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.ok{color:#2e933c}.fail{color:#d7263d}section{margin-bottom:36px}.legend span{margin-right:16px}</style></head><body>
<h1>quorate drills</h1>"#,
    );
    let _ = write!(
        s,
        r#"<p class="{}"><b>{}</b></p><p class="legend"><span style="color:#2e933c">&#9646; fresh read</span><span style="color:#d7263d">&#9646; read flagged by the checker</span><span style="color:#999">&#9646; failed read</span><span style="color:#8a6d00">&#9646; fault window</span></p>"#,
        if verdict(results) { "ok" } else { "fail" },
        if verdict(results) {
            "PASS: every strict run is clean and every naive run exposes its anomaly"
        } else {
            "FAIL"
        }
    );
    for r in results {
        let _ = write!(
            s,
            r#"<section><h2>{} — {}</h2><p>{} operations, availability {:.1}%, p50 {:.1} ms, p99 {:.1} ms — <span class="{}">{}</span></p>"#,
            escape(r.scenario),
            r.config.label(),
            r.report.ops,
            r.availability() * 100.0,
            ms(r.p50),
            ms(r.p99),
            if r.passed() { "ok" } else { "fail" },
            escape(&verdict_text(r))
        );
        s.push_str(&timeline(r));
        s.push_str("<table><tr><th>anomaly</th><th>count</th></tr>");
        for name in ANOMALIES {
            let n = r.report.anomalies.get(name).copied().unwrap_or(0);
            let _ = write!(s, "<tr><td>{name}</td><td>{n}</td></tr>");
        }
        s.push_str("</table></section>");
    }
    s.push_str("</body></html>\n");
    s
}

//! The drill's HTML page: the summary table, then per scenario one figure
//! with its naive and strict runs on one time axis.
//!
//! Each run has a lane per client region (where the client is), each
//! operation a mark coloured by the region that served it (a circle for a
//! read, a square for a write), a red ring where the checker flagged it and
//! a grey cross where it failed; below the lanes, availability and p99
//! latency over time, and for scenarios that move clocks, every region's
//! offset against `max_offset`. Fault windows are shaded across the whole
//! figure and labelled above it. Hovering a mark shows its history lines.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::report::{anomalies_text, ms, verdict_text};
use super::{verdict, ClockSample, Configuration, Fault, RunResult, Window};
use crate::history::{Event, EventType, OpKind};

const LEFT: f64 = 150.0;
const PLOT: f64 = 900.0;
const RIGHT: f64 = 70.0;
const WIDTH: f64 = LEFT + PLOT + RIGHT;
const LANE: f64 = 40.0;
const PANEL: f64 = 46.0;
const CLOCK_PANEL: f64 = 90.0;
const BUCKETS: usize = 60;
const FLAGGED: &str = "#d7263d";
const FAILED: &str = "#8a8a8a";
const FAULT: &str = "#f2c14e";
/// Colours of the serving regions: none of them red, green or grey, which
/// mean flagged, healthy and failed.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#9467bd", "#17becf", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#393b79",
];

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One operation: its invoke, its completion and the checker's verdict.
struct Op<'a> {
    index: usize,
    invoke: &'a Event,
    done: &'a Event,
    flagged: bool,
}

impl Op<'_> {
    fn latency_nanos(&self) -> u64 {
        self.done.time.saturating_sub(self.invoke.time)
    }

    fn client(&self) -> &str {
        self.invoke.client.as_deref().unwrap_or("unknown")
    }

    fn is_read(&self) -> bool {
        self.invoke.op == OpKind::Read
    }

    /// The hover text: what happened, then the two history lines.
    fn title(&self) -> String {
        let outcome = match self.done.kind {
            EventType::Ok => format!(
                "served by {} in {:.1} ms",
                self.done.region.as_deref().unwrap_or("?"),
                self.latency_nanos() as f64 / 1e6
            ),
            EventType::Fail => "failed".to_owned(),
            _ => "outcome unknown".to_owned(),
        };
        let line = |e: &Event| serde_json::to_string(e).unwrap_or_default();
        format!(
            "{} {} by process {} (client in {}), {}{}\n{}\n{}",
            self.invoke.op.name(),
            self.invoke.key,
            self.invoke.process,
            self.client(),
            outcome,
            if self.flagged {
                " — flagged by the checker"
            } else {
                ""
            },
            line(self.invoke),
            line(self.done)
        )
    }
}

fn operations(r: &RunResult) -> Vec<Op<'_>> {
    let mut open = std::collections::HashMap::new();
    let mut next = 0usize;
    let mut ops = Vec::new();
    for e in &r.events {
        if e.kind == EventType::Invoke {
            open.insert(e.process, (next, e));
            next += 1;
        } else if let Some((index, invoke)) = open.remove(&e.process) {
            ops.push(Op {
                index,
                invoke,
                done: e,
                flagged: r.report.flagged.get(index).copied().unwrap_or(false),
            });
        }
    }
    ops
}

/// Maps run time to the page.
#[derive(Clone, Copy)]
struct Axis {
    total_nanos: f64,
}

impl Axis {
    fn x(self, nanos: f64) -> f64 {
        LEFT + PLOT * (nanos / self.total_nanos).clamp(0.0, 1.0)
    }
}

/// The colour of each region named anywhere in the runs.
struct Colours(Vec<String>);

impl Colours {
    fn of(runs: &[&RunResult]) -> Colours {
        let mut names = BTreeSet::new();
        for r in runs {
            for e in &r.events {
                names.extend(e.region.iter().cloned());
                names.extend(e.client.iter().cloned());
            }
            for s in &r.clocks {
                names.extend(s.offsets.iter().map(|(n, _)| n.clone()));
            }
        }
        Colours(names.into_iter().collect())
    }

    fn get(&self, region: &str) -> &'static str {
        let i = self.0.iter().position(|n| n == region).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    }
}

/// Fault labels in rows, so that none overlaps another: `(window, row)`.
fn label_rows(windows: &[Window], axis: Axis) -> (Vec<(usize, usize, f64)>, usize) {
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| windows[i].from);
    let mut row_ends: Vec<f64> = Vec::new();
    let mut placed = Vec::new();
    for i in order {
        let w = &windows[i];
        let text = w.fault.label().len() as f64 * 6.3 + 12.0;
        let x = axis.x(w.from.as_nanos() as f64).min(WIDTH - text);
        let row = match row_ends.iter().position(|&end| end <= x) {
            Some(row) => row,
            None => {
                row_ends.push(0.0);
                row_ends.len() - 1
            }
        };
        row_ends[row] = x + text;
        placed.push((i, row, x));
    }
    (placed, row_ends.len())
}

fn moves_clocks(windows: &[Window], clocks: &[ClockSample]) -> bool {
    windows
        .iter()
        .any(|w| matches!(w.fault, Fault::Skew(..) | Fault::Drift(..)))
        || clocks
            .iter()
            .any(|s| s.offsets.iter().any(|&(_, o)| o != 0))
}

/// Per time bucket: the share of operations completing in it that
/// succeeded, and the p99 latency of those that succeeded.
fn over_time(ops: &[Op<'_>], axis: Axis) -> Vec<(Option<f64>, Option<f64>)> {
    let mut buckets: Vec<(u64, u64, Vec<u64>)> = vec![(0, 0, Vec::new()); BUCKETS];
    for op in ops {
        let b = ((op.done.time as f64 / axis.total_nanos) * BUCKETS as f64) as usize;
        let bucket = &mut buckets[b.min(BUCKETS - 1)];
        bucket.0 += 1;
        if op.done.kind == EventType::Ok {
            bucket.1 += 1;
            bucket.2.push(op.latency_nanos());
        }
    }
    buckets
        .into_iter()
        .map(|(total, ok, mut latencies)| {
            let availability = (total > 0).then(|| ok as f64 / total as f64);
            latencies.sort_unstable();
            let p99 = (!latencies.is_empty()).then(|| {
                let i = ((latencies.len() - 1) as f64 * 0.99).round() as usize;
                latencies[i] as f64 / 1e6
            });
            (availability, p99)
        })
        .collect()
}

/// A line through the buckets that have a value, broken where one has none.
fn bucket_line(values: &[Option<f64>], axis: Axis, y: impl Fn(f64) -> f64, colour: &str) -> String {
    let mut svg = String::new();
    let mut points = Vec::new();
    let step = axis.total_nanos / BUCKETS as f64;
    let flush = |points: &mut Vec<(f64, f64)>, svg: &mut String| {
        if points.len() == 1 {
            let (x, y) = points[0];
            let _ = write!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.5" fill="{colour}"/>"#
            );
        } else if points.len() > 1 {
            let list: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                list.join(" ")
            );
        }
        points.clear();
    };
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => points.push((axis.x((i as f64 + 0.5) * step), y(*v))),
            None => flush(&mut points, &mut svg),
        }
    }
    flush(&mut points, &mut svg);
    svg
}

fn text(svg: &mut String, x: f64, y: f64, size: u32, anchor: &str, colour: &str, body: &str) {
    let _ = write!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{colour}">{}</text>"#,
        escape(body)
    );
}

/// One run's block, from `top`; returns its height.
fn run_block(
    svg: &mut String,
    r: &RunResult,
    top: f64,
    axis: Axis,
    colours: &Colours,
    p99_scale: f64,
    clock_panel: bool,
) -> f64 {
    let ops = operations(r);
    let mut y = top;
    let status = if r.passed() { "#2e933c" } else { FLAGGED };
    text(
        svg,
        8.0,
        y + 15.0,
        14,
        "start",
        "#222",
        &format!("{} configuration", r.config.label()),
    );
    text(
        svg,
        LEFT,
        y + 15.0,
        12,
        "start",
        status,
        &format!(
            "{} — {} operations, availability {:.1}%, p50 {:.1} ms, p99 {:.1} ms, anomalies: {}",
            verdict_text(r),
            r.report.ops,
            r.availability() * 100.0,
            ms(r.p50),
            ms(r.p99),
            anomalies_text(r)
        ),
    );
    y += 24.0;

    // Lanes: one per client region.
    let lanes: Vec<String> = ops
        .iter()
        .map(|o| o.client().to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for (i, lane) in lanes.iter().enumerate() {
        let lane_top = y + LANE * i as f64;
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{lane_top:.1}" width="{PLOT}" height="{LANE}" fill="{}" fill-opacity="0.5"/>"##,
            if i % 2 == 0 { "#f7f7f7" } else { "#ffffff" }
        );
        text(
            svg,
            LEFT - 8.0,
            lane_top + LANE / 2.0 + 4.0,
            12,
            "end",
            colours.get(lane),
            &format!("clients in {lane}"),
        );
    }
    let place = |op: &Op<'_>| {
        let lane = lanes.iter().position(|l| l == op.client()).unwrap_or(0);
        // Reads in the upper half of the lane, writes in the lower, each
        // spread over a band so that marks at one moment do not hide each
        // other.
        let jitter = ((op.index as u64).wrapping_mul(2_654_435_761) % 9) as f64;
        let band = if op.is_read() { 7.0 } else { 23.0 };
        (
            axis.x(op.done.time as f64),
            y + LANE * lane as f64 + band + jitter,
        )
    };
    // Flagged marks last, so that none hides under a healthy one.
    let mut order: Vec<&Op<'_>> = ops.iter().collect();
    order.sort_by_key(|o| o.flagged);
    for op in order {
        let (x, my) = place(op);
        let title = escape(&op.title());
        let _ = write!(svg, "<g><title>{title}</title>");
        match op.done.kind {
            EventType::Ok => {
                let fill = colours.get(op.done.region.as_deref().unwrap_or(""));
                if op.is_read() {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{my:.1}" r="2.6" fill="{fill}"/>"#
                    );
                } else {
                    let _ = write!(
                        svg,
                        r#"<rect x="{:.1}" y="{:.1}" width="5" height="5" fill="{fill}"/>"#,
                        x - 2.5,
                        my - 2.5
                    );
                }
            }
            EventType::Fail => {
                let _ = write!(
                    svg,
                    r#"<path d="M{:.1} {:.1}l5 5m0 -5l-5 5" stroke="{FAILED}" stroke-width="1.2"/>"#,
                    x - 2.5,
                    my - 2.5
                );
            }
            _ => {
                let _ = write!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{my:.1}" r="2.6" fill="white" stroke="{FAILED}"/>"#
                );
            }
        }
        if op.flagged {
            let _ = write!(
                svg,
                r#"<circle cx="{x:.1}" cy="{my:.1}" r="5.5" fill="none" stroke="{FLAGGED}" stroke-width="1.8"/>"#
            );
        }
        svg.push_str("</g>");
    }
    y += LANE * lanes.len() as f64 + 8.0;

    // Availability and p99 over time.
    let series = over_time(&ops, axis);
    let availability: Vec<Option<f64>> = series.iter().map(|s| s.0).collect();
    let p99: Vec<Option<f64>> = series.iter().map(|s| s.1).collect();
    for (label, values, scale, unit) in [
        ("availability", &availability, 1.0, "%"),
        ("p99 latency", &p99, p99_scale, " ms"),
    ] {
        let panel_top = y + 4.0;
        let h = PANEL - 14.0;
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{panel_top:.1}" width="{PLOT}" height="{h}" fill="none" stroke="#e3e3e3"/>"##
        );
        text(
            svg,
            LEFT - 8.0,
            panel_top + h / 2.0 + 4.0,
            12,
            "end",
            "#444",
            label,
        );
        let (top_label, bottom_label) = if unit == "%" {
            ("100%".to_owned(), "0%".to_owned())
        } else {
            (format!("{scale:.0} ms"), "0".to_owned())
        };
        text(
            svg,
            LEFT + PLOT + 4.0,
            panel_top + 9.0,
            10,
            "start",
            "#666",
            &top_label,
        );
        text(
            svg,
            LEFT + PLOT + 4.0,
            panel_top + h,
            10,
            "start",
            "#666",
            &bottom_label,
        );
        let yv = |v: f64| panel_top + h - h * (v / scale).clamp(0.0, 1.0);
        svg.push_str(&bucket_line(values, axis, yv, "#333"));
        y += PANEL;
    }

    if clock_panel {
        let panel_top = y + 6.0;
        let h = CLOCK_PANEL - 16.0;
        let max_offset = r.max_offset.as_nanos() as f64;
        let largest = r
            .clocks
            .iter()
            .flat_map(|s| s.offsets.iter().map(|&(_, o)| (o as f64).abs()))
            .fold(max_offset, f64::max)
            * 1.15;
        let mid = panel_top + h / 2.0;
        let yv = |nanos: f64| mid - (h / 2.0) * (nanos / largest).clamp(-1.0, 1.0);
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{panel_top:.1}" width="{PLOT}" height="{h}" fill="none" stroke="#e3e3e3"/><line x1="{LEFT}" x2="{:.1}" y1="{mid:.1}" y2="{mid:.1}" stroke="#ccc"/>"##,
            LEFT + PLOT
        );
        for sign in [1.0, -1.0] {
            let ly = yv(sign * max_offset);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{FLAGGED}" stroke-dasharray="5 4" stroke-opacity="0.7"/>"##,
                LEFT + PLOT
            );
        }
        text(
            svg,
            LEFT + PLOT + 4.0,
            yv(max_offset) + 4.0,
            10,
            "start",
            FLAGGED,
            &format!("+{:.0} ms", max_offset / 1e6),
        );
        text(
            svg,
            LEFT + PLOT + 4.0,
            yv(-max_offset) + 4.0,
            10,
            "start",
            FLAGGED,
            &format!("−{:.0} ms", max_offset / 1e6),
        );
        text(
            svg,
            LEFT - 8.0,
            mid - 2.0,
            12,
            "end",
            "#444",
            "clock offset",
        );
        text(
            svg,
            LEFT - 8.0,
            mid + 12.0,
            10,
            "end",
            FLAGGED,
            "vs ± max_offset",
        );
        let regions: BTreeSet<&str> = r
            .clocks
            .iter()
            .flat_map(|s| s.offsets.iter().map(|(n, _)| n.as_str()))
            .collect();
        for region in regions {
            let points: Vec<String> = r
                .clocks
                .iter()
                .filter_map(|s| {
                    let (_, o) = s.offsets.iter().find(|(n, _)| n == region)?;
                    Some(format!(
                        "{:.1},{:.1}",
                        axis.x(s.at.as_nanos() as f64),
                        yv(*o as f64)
                    ))
                })
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"><title>{} clock offset</title></polyline>"#,
                points.join(" "),
                colours.get(region),
                escape(region)
            );
        }
        y += CLOCK_PANEL;
    }
    y - top + 10.0
}

/// One scenario's figure: its runs on one time axis, the fault windows
/// shaded and labelled.
fn figure(runs: &[&RunResult]) -> String {
    let total = runs
        .iter()
        .map(|r| r.duration.as_nanos())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let axis = Axis { total_nanos: total };
    let colours = Colours::of(runs);
    let windows = &runs[0].windows;
    let (labels, rows) = label_rows(windows, axis);
    let label_band = 8.0 + 16.0 * rows as f64;
    let p99_scale = runs
        .iter()
        .flat_map(|r| over_time(&operations(r), axis))
        .filter_map(|s| s.1)
        .fold(1.0, f64::max);
    let clock_panel = runs.iter().any(|r| moves_clocks(&r.windows, &r.clocks));

    let mut body = String::new();
    let mut y = label_band;
    for r in runs {
        y += run_block(&mut body, r, y, axis, &colours, p99_scale, clock_panel);
    }
    let plot_bottom = y;
    let height = plot_bottom + 30.0;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="system-ui, sans-serif" role="img">"#
    );
    for (i, row, lx) in &labels {
        let w = &windows[*i];
        let (x0, x1) = (
            axis.x(w.from.as_nanos() as f64),
            axis.x(w.until.as_nanos() as f64),
        );
        let ly = 14.0 + 16.0 * *row as f64;
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{label_band:.1}" width="{:.1}" height="{:.1}" fill="{FAULT}" fill-opacity="0.16"/><line x1="{x0:.1}" x2="{x1:.1}" y1="{:.1}" y2="{:.1}" stroke="#b8901c" stroke-width="2"/>"##,
            (x1 - x0).max(1.0),
            plot_bottom - label_band,
            ly + 3.0,
            ly + 3.0,
        );
        text(
            &mut svg,
            *lx + 2.0,
            ly,
            11,
            "start",
            "#7a5c00",
            &w.fault.label(),
        );
    }
    svg.push_str(&body);
    let seconds = (total / 1e9).ceil() as u64;
    let step = seconds.div_ceil(15).max(1);
    for s in (0..=seconds).step_by(step as usize) {
        let x = axis.x(s as f64 * 1e9);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{plot_bottom:.1}" y2="{:.1}" stroke="#999"/>"##,
            plot_bottom + 4.0
        );
        text(
            &mut svg,
            x,
            plot_bottom + 16.0,
            10,
            "middle",
            "#555",
            &format!("{s} s"),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn legend(colours: &Colours) -> String {
    let mut s = String::from(r#"<p class="legend">"#);
    for name in &colours.0 {
        let _ = write!(
            s,
            r#"<span><i style="background:{}"></i>served by {}</span>"#,
            colours.get(name),
            escape(name)
        );
    }
    s.push_str("</p>");
    s
}

/// One self-contained HTML page: the summary table, then per scenario its
/// runs on one time axis (see the module's docs).
pub fn html_report(results: &[RunResult]) -> String {
    let mut s = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>quorate drills</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1140px}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #d5d5d5;padding:3px 8px;font-size:13px;text-align:right;white-space:nowrap}
td.wrap{white-space:normal}
th{background:#f4f4f4}td:first-child,th:first-child,td.l{text-align:left}
.ok{color:#2e933c}.fail{color:#d7263d}section{margin:28px 0 36px}
.legend{font-size:13px}.legend span{margin-right:16px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px;vertical-align:-1px;border-radius:50%}
.story{color:#444;font-size:14px;margin:4px 0 8px}
svg text{user-select:none}
</style></head><body>
<h1>quorate drills</h1>"#,
    );
    let passed = verdict(results);
    let _ = write!(
        s,
        r#"<p class="{}"><b>{}</b></p>"#,
        if passed { "ok" } else { "fail" },
        if passed {
            "PASS: every strict run is clean and every naive run exposes its anomaly"
        } else {
            "FAIL: see the verdict column"
        }
    );
    if let Some(variant) = results
        .iter()
        .map(|r| r.variant.describe())
        .filter(|d| !d.is_empty())
        .max_by_key(|d| d.len())
    {
        let _ = write!(s, "<p>{}</p>", escape(&variant));
    }
    s.push_str(
        "<table><tr><th>scenario</th><th>config</th><th>ops</th><th>availability</th><th>p50 ms</th><th>p99 ms</th><th>anomalies</th><th>verdict</th></tr>",
    );
    for r in results {
        let _ = write!(
            s,
            r##"<tr><td><a href="#{}">{}</a></td><td class="l">{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}</td><td>{:.1}</td><td class="l wrap">{}</td><td class="l {}">{}</td></tr>"##,
            escape(r.scenario),
            escape(r.scenario),
            r.config.label(),
            r.report.ops,
            r.availability() * 100.0,
            ms(r.p50),
            ms(r.p99),
            escape(&anomalies_text(r)),
            if r.passed() { "ok" } else { "fail" },
            escape(&verdict_text(r))
        );
    }
    s.push_str("</table>");
    s.push_str(
        r#"<p class="legend"><span>&#9679; read</span><span>&#9632; write</span><span style="color:#d7263d">&#9711; flagged by the checker</span><span style="color:#8a8a8a">&#10005; failed</span><span style="color:#8a8a8a">&#9675; outcome unknown</span><span style="color:#b8901c">&#9646; fault window</span><span>hover a mark for its history lines</span></p>"#,
    );

    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.scenario) {
            names.push(r.scenario);
        }
    }
    let stories = super::scenarios();
    for name in names {
        let mut runs: Vec<&RunResult> = results.iter().filter(|r| r.scenario == name).collect();
        runs.sort_by_key(|r| r.config != Configuration::Naive);
        let _ = write!(s, r#"<section id="{0}"><h2>{0}</h2>"#, escape(name));
        if let Some(sc) = stories.iter().find(|sc| sc.name == name) {
            let _ = write!(
                s,
                r#"<p class="story">{}. Naive: {}. Strict: {}.</p>"#,
                escape(sc.story),
                escape(sc.naive),
                escape(sc.mechanism)
            );
        }
        s.push_str(&legend(&Colours::of(&runs)));
        s.push_str(&figure(&runs));
        s.push_str("</section>");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{run, scenarios, Configuration};

    fn skew_runs() -> Vec<RunResult> {
        let all = scenarios();
        let skew = all
            .iter()
            .find(|s| s.windows.iter().any(|w| matches!(w.fault, Fault::Skew(..))))
            .expect("a skew scenario");
        [Configuration::Naive, Configuration::Strict]
            .into_iter()
            .map(|c| run(skew, c, 1).unwrap())
            .collect()
    }

    #[test]
    fn every_operation_is_drawn_with_its_history_lines() {
        let runs = skew_runs();
        let page = html_report(&runs);
        let ops: u64 = runs.iter().map(|r| r.report.ops).sum();
        assert_eq!(page.matches("<g><title>").count() as u64, ops);
        // A flagged read of the naive run is ringed and its hover text
        // carries its invoke line, with where the client was.
        assert!(page.contains(&format!(r#"stroke="{FLAGGED}" stroke-width="1.8""#)));
        assert!(page.contains("flagged by the checker\n{&quot;process&quot;"));
        assert!(page.contains("&quot;client&quot;:"));
        // Both runs in one figure, with the clock panel and max_offset.
        assert_eq!(page.matches("<svg").count(), 1);
        assert!(page.contains("naive configuration") && page.contains("strict configuration"));
        assert!(page.contains("vs ± max_offset"));
    }

    #[test]
    fn clock_samples_follow_the_faults() {
        let runs = skew_runs();
        let r = &runs[0];
        let skew = r
            .windows
            .iter()
            .find_map(|w| match w.fault {
                Fault::Skew(region, ms) => Some((w, region, ms)),
                _ => None,
            })
            .unwrap();
        let (w, region, ms) = skew;
        let inside = r
            .clocks
            .iter()
            .filter(|s| s.at >= w.from && s.at < w.until)
            .flat_map(|s| s.offsets.iter())
            .filter(|(n, _)| n == region)
            .map(|&(_, o)| o)
            .collect::<Vec<_>>();
        assert!(
            inside.contains(&(ms * 1_000_000)),
            "{region} is {ms} ms off inside its window: {inside:?}"
        );
        assert_eq!(
            r.clocks.first().map(|s| s.at),
            Some(std::time::Duration::ZERO)
        );
    }

    #[test]
    fn labels_of_overlapping_windows_take_separate_rows() {
        let windows = vec![
            Window {
                from: std::time::Duration::from_secs(1),
                until: std::time::Duration::from_secs(5),
                fault: Fault::Isolate("eu-west"),
            },
            Window {
                from: std::time::Duration::from_millis(1100),
                until: std::time::Duration::from_secs(3),
                fault: Fault::Skew("us-east", 250),
            },
            Window {
                from: std::time::Duration::from_secs(8),
                until: std::time::Duration::from_secs(9),
                fault: Fault::Crash("ap-south"),
            },
        ];
        let axis = Axis { total_nanos: 10e9 };
        let (placed, rows) = label_rows(&windows, axis);
        assert_eq!(rows, 2);
        let row_of = |i: usize| placed.iter().find(|p| p.0 == i).unwrap().1;
        assert_ne!(row_of(0), row_of(1));
        assert_eq!(row_of(2), 0, "a later window reuses the first row");
    }
}

//! The Prometheus endpoint, scraped over real HTTP on loopback, shows every
//! metric the README lists.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod prometheus;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_every_metric() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (client, control, sim) = prometheus::instrumented(free).await.unwrap();
    prometheus::workload(&client, &control, &sim, 12)
        .await
        .unwrap();
    let body = tokio::task::spawn_blocking(move || scrape(free))
        .await
        .unwrap();
    for name in [
        quorate::metric_names::READS,
        quorate::metric_names::ESCALATIONS,
        quorate::metric_names::WRITES,
        quorate::metric_names::CONFLICTS,
        quorate::metric_names::RETRIES,
        quorate::metric_names::AMBIGUOUS_RESOLVED,
        quorate::metric_names::CLOCK_OFFSET,
        quorate::metric_names::CLOCK_DEVIATION,
        quorate::metric_names::REPLICA_LAG,
        quorate::metric_names::HEDGES_FIRED,
    ] {
        assert!(
            body.contains(name),
            "{name} missing from the scrape:\n{body}"
        );
    }
    assert!(
        body.contains(r#"quorate_reads_total{policy="strong",region="eu-west",role="leader"}"#),
        "{body}"
    );
    assert!(
        body.contains(r#"quorate_ambiguous_commits_resolved_total{outcome="applied"}"#),
        "{body}"
    );
    // OpenTelemetry's database client histogram, Prometheus-named.
    assert!(
        body.contains(r#"db_client_operation_duration_count{db_system_name="other_sql",db_operation_name="read"}"#),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("# HELP db_client_operation_duration ")),
        "db_client_operation_duration has no # HELP line"
    );
    // A histogram with OpenTelemetry's buckets, not a summary.
    assert!(
        body.lines()
            .any(|l| l == "# TYPE db_client_operation_duration histogram"),
        "db_client_operation_duration is not a histogram:\n{body}"
    );
    assert!(
        body.contains(r#"db_client_operation_duration_bucket{db_system_name="other_sql",db_operation_name="read",le="0.005"}"#),
        "{body}"
    );
    // Every family has its help text (promtool's check).
    for name in [
        quorate::metric_names::READS,
        quorate::metric_names::ESCALATIONS,
        quorate::metric_names::WRITES,
        quorate::metric_names::CONFLICTS,
        quorate::metric_names::RETRIES,
        quorate::metric_names::AMBIGUOUS_RESOLVED,
        quorate::metric_names::CLOCK_OFFSET,
        quorate::metric_names::CLOCK_DEVIATION,
        quorate::metric_names::REPLICA_LAG,
        quorate::metric_names::HEDGES_FIRED,
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no # HELP line:\n{body}"
        );
    }
    promtool_check(&body);
    let escalations: f64 = body
        .lines()
        .filter(|l| l.starts_with("quorate_escalations_total{policy=\"session\","))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        escalations > 0.0,
        "session reads past the lagging replica escalate:\n{body}"
    );
    // Each escalation counted under the reason the read path gave.
    for line in body.lines() {
        if line.starts_with("quorate_escalations_total{") && line.contains("reason=\"other\"") {
            assert!(
                line.ends_with(" 0"),
                "an escalation without its reason: {line}"
            );
        }
    }
}

#[test]
fn the_alert_rules_name_only_metrics_that_exist() {
    let rules = include_str!("../examples/alerts.yml");
    let known = [
        quorate::metric_names::READS,
        quorate::metric_names::ESCALATIONS,
        quorate::metric_names::VERIFY_FAILURES,
        quorate::metric_names::REGION_EJECTIONS,
        quorate::metric_names::CLOCK_DEVIATION,
    ];
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("quorate_") {
            assert!(
                known.contains(&word),
                "alerts.yml uses unknown metric {word}"
            );
            used += 1;
        }
    }
    assert!(used >= 5, "the rules reference the metrics they alert on");
    for alert in [
        "QuorateClockOffsetHigh",
        "QuorateClockOffsetCritical",
        "QuorateEscalationRateHigh",
        "QuorateReadAfterWriteFailures",
        "QuorateRegionEjected",
    ] {
        assert!(rules.contains(alert), "{alert} missing");
    }
}

/// `promtool check metrics` on the scrape (the HTTP head cut off): every
/// family well formed, with help text, named by Prometheus' conventions.
/// promtool comes with Debian's `prometheus` package; without it the check
/// is skipped outside CI and fails in CI.
fn promtool_check(response: &str) {
    use std::process::{Command, Stdio};
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not found ({e}): install Debian's prometheus package; skipping");
            return;
        }
        Err(e) => panic!("promtool is required in CI (Debian package prometheus): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

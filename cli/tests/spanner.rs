//! `quorate drill --backend spanner`: the seed scenarios and the nemesis
//! on the emulator of `scripts/spanner`, through the installed command's
//! code path.

use std::process::Command;

fn drill(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "spanner"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_scenarios_and_the_nemesis_run_on_the_spanner_emulator() {
    if quorate::conformance::server_env(
        ["SPANNER_EMULATOR_HOST", "QUORATE_SPANNER_DATABASE"],
        "the Spanner emulator",
        "scripts/spanner",
    )
    .is_none()
    {
        return;
    }
    let _one = EMULATOR.blocking_lock();
    let dir = std::env::temp_dir().join(format!("quorate-spanner-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("h.jsonl");

    // Every seed scenario, naive and strict; a region's clock skew is its
    // clients' clock.
    let (code, out, err) = drill(&["--json", "--history", base.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["backend"], "spanner");
    let runs = json["scenarios"].as_array().unwrap();
    let names: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["config"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("isolation-latency", "naive"),
            ("isolation-latency", "strict"),
            ("clock-skew-600ms", "naive"),
            ("clock-skew-600ms", "strict"),
            ("partition-global-tables", "naive"),
            ("partition-global-tables", "strict"),
            ("partial-partition-skew-250ms", "naive"),
            ("partial-partition-skew-250ms", "strict"),
            ("skew-isolate-conflicting-writes", "naive"),
            ("skew-isolate-conflicting-writes", "strict"),
        ]
    );
    for run in runs {
        // The producer of clock-skew-600ms waits on its consumer, each
        // write a read-write transaction on the one emulator.
        let least = if run["name"] == "clock-skew-600ms" {
            20
        } else {
            100
        };
        assert!(run["ops"].as_u64().unwrap() > least, "{run}");
        assert!(run["fault_errors"].as_array().unwrap().is_empty(), "{run}");
        if run["config"] == "strict" {
            assert!(
                run["anomalies"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v == 0),
                "{run}"
            );
        } else {
            // Spanner's claim is checked, not taken: the naive run shows
            // none of the scenario's anomaly.
            let about = match run["name"].as_str().unwrap() {
                "partition-global-tables" => "duplicate-application",
                "skew-isolate-conflicting-writes" => "monotonic-reads",
                _ => "stale-read",
            };
            assert!(!run["prevented"].as_str().unwrap().is_empty(), "{run}");
            assert_eq!(run["anomalies"][about], 0, "{run}");
        }
    }
    assert_eq!(json["not_run"].as_array().unwrap().len(), 0, "{out}");

    // The saved history says when ap-south was cut off from the emulator,
    // and re-checks clean.
    let strict = dir.join("h-isolation-latency-strict.jsonl");
    let text = std::fs::read_to_string(&strict).unwrap();
    for phase in ["start", "stop"] {
        let line = format!(r#"{{"nemesis":"{phase}","fault":"ap-south isolated","time":"#);
        assert!(
            text.contains(&line),
            "no {phase} line in {}",
            strict.display()
        );
    }
    let checked = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["check", strict.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Two of the nemesis's random schedules, with what the emulator
    // cannot make left out by name: every strict run clean.
    let (code, out, err) = drill(&["--nemesis", "2", "--seed", "1"]);
    println!("{out}");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("nemesis on spanner: 2 of 2 seeds run") && out.contains("PASS"),
        "{out}"
    );
    assert!(
        out.contains("nemesis-1: ran without what spanner cannot make"),
        "{out}"
    );
}

/// `quorate drill --backend spanner --cluster FILE`: the scenarios'
/// workloads against the database the service's settings file names,
/// while the team's own tool injects the fault. Here the "instance" is
/// the emulator, reached through a proxy that stands in for the network,
/// and the tool is this test partitioning it for the middle of each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_your_own_is_drilled_while_your_tool_partitions_it() {
    use quorate::cut_proxy::CutProxy;
    use std::net::ToSocketAddrs;
    use std::time::Duration;

    let Some([emulator, database]) = quorate::conformance::server_env(
        ["SPANNER_EMULATOR_HOST", "QUORATE_SPANNER_DATABASE"],
        "the Spanner emulator",
        "scripts/spanner",
    ) else {
        return;
    };
    // One drill on the emulator at a time: it runs one read-write
    // transaction at a time, and each drill is a process of its own.
    let _one = EMULATOR.lock().await;
    let upstream = emulator.to_socket_addrs().unwrap().next().unwrap();
    let network = CutProxy::start(upstream).await.unwrap();
    let dir = std::env::temp_dir().join(format!("quorate-byoc-spanner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("staging.toml");
    std::fs::write(
        &file,
        format!(
            "[spanner]\ndatabase = \"{database}\"\nregions = [\"eu\", \"us\", \"ap\"]\nlocal = \"eu\"\ntable = \"quorate_byoc_{}\"\nserialize_read_write = true\nemulator_host = \"{}\"\n",
            std::process::id(),
            network.addr()
        ),
    )
    .unwrap();

    // Without the flag: refused, the database named.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "spanner", "--cluster"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to run against"), "{stderr}");
    assert!(stderr.contains(&database), "{stderr}");

    let history = dir.join("h.jsonl");
    let drill = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "spanner", "--cluster"])
        .arg(&file)
        .args([
            "--not-production",
            "--duration",
            "7s",
            "--scenario",
            "isolation-latency",
            "--history",
        ])
        .arg(&history)
        .output();
    // The operator's tool: the network to the database is cut from the
    // 2nd to the 4th second of each of the two runs.
    let tool = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            network.partition();
            tokio::time::sleep(Duration::from_secs(2)).await;
            network.heal();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    };
    let (out, ()) = tokio::join!(drill, tool);
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS: every strict run is clean"),
        "{stdout}"
    );
    assert!(
        stderr.contains("regions eu-west = eu, us-east = us, ap-south = ap"),
        "{stderr}"
    );
    // The partition reached the runs: operations failed during it.
    for config in ["naive", "strict"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with("isolation-latency") && l.contains(config))
            .expect("a row per run");
        assert!(!row.contains("100.0%"), "{config}: nothing failed: {row}");
        let saved = dir.join(format!("h-isolation-latency-{config}.jsonl"));
        let text = std::fs::read_to_string(&saved).unwrap();
        assert!(
            text.lines().all(|l| l.contains(r#""key":"quorate-drill-"#)),
            "{config}: every key prefixed"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

static EMULATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let dir = std::env::temp_dir().join(format!("quorate-spanner-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("h.jsonl");

    // Every seed scenario: the two whose faults the emulator can make
    // run, naive and strict; the three that skew a clock are refused by
    // name.
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
            ("partition-global-tables", "naive"),
            ("partition-global-tables", "strict"),
        ]
    );
    for run in runs {
        assert!(run["ops"].as_u64().unwrap() > 100, "{run}");
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
            assert!(
                run["prevented"].as_str().unwrap().contains("leader"),
                "{run}"
            );
            let about = match run["name"].as_str().unwrap() {
                "isolation-latency" => "stale-read",
                _ => "duplicate-application",
            };
            assert_eq!(run["anomalies"][about], 0, "{run}");
        }
    }
    let not_run: Vec<&str> = json["not_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        not_run,
        [
            "clock-skew-600ms",
            "partial-partition-skew-250ms",
            "skew-isolate-conflicting-writes"
        ]
    );
    assert!(json["not_run"][0]["faults"][0]
        .as_str()
        .unwrap()
        .contains("TrueTime"));

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

//! `quorate drill --backend dynamodb`: a seed scenario on the DynamoDB
//! Local of `scripts/dynamodb`, through the installed command's code path.

use std::process::Command;

#[test]
fn the_partition_scenario_runs_on_dynamodb_local_from_the_command_line() {
    let Some([_endpoint]) = quorate::conformance::server_env(
        ["QUORATE_DYNAMODB_ENDPOINT"],
        "DynamoDB Local",
        "scripts/dynamodb",
    ) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "drill",
            "--backend",
            "dynamodb",
            "--scenario",
            "partition-global-tables",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["backend"], "dynamodb");
    let runs = json["scenarios"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0]["anomalies"]["duplicate-application"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(runs[1]["anomalies"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == 0));
    // A scenario it cannot fault is refused by name, and nothing runs.
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "drill",
            "--backend",
            "dynamodb",
            "--scenario",
            "clock-skew-600ms",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "clock-skew-600ms: not run on dynamodb, which cannot make: ap-south clock +300 ms"
        ),
        "{stdout}"
    );

    // Two of the nemesis's random schedules, with what DynamoDB Local
    // cannot make left out by name: every strict run clean.
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "drill",
            "--backend",
            "dynamodb",
            "--nemesis",
            "2",
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nemesis on dynamodb: 2 of 2 seeds run") && stdout.contains("PASS"),
        "{stdout}"
    );
}

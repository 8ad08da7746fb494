//! `quorate drill --backend dynamodb`: a seed scenario on the DynamoDB
//! Local of `scripts/dynamodb`, through the installed command's code path.

use std::process::Command;

/// `quorate drill --backend dynamodb ARGS`: exit code, stdout, stderr.
fn drill(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "dynamodb"])
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
fn the_partition_scenario_runs_on_dynamodb_local_from_the_command_line() {
    let Some([_endpoint]) = quorate::conformance::server_env(
        ["QUORATE_DYNAMODB_ENDPOINT"],
        "DynamoDB Local",
        "scripts/dynamodb",
    ) else {
        return;
    };
    let (code, stdout, stderr) = drill(&["--scenario", "partition-global-tables", "--json"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
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
    // A region's clock skewed (its clients'): the naive producer's
    // writes are read stale by the consumer, the strict run is clean.
    let (code, stdout, stderr) = drill(&["--scenario", "clock-skew-600ms", "--json"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let runs = json["scenarios"].as_array().unwrap();
    assert!(
        runs[0]["anomalies"]["stale-read"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(runs[1]["anomalies"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == 0));

    // Two of the nemesis's random schedules, with what DynamoDB Local
    // cannot make left out by name: every strict run clean.
    let (code, stdout, stderr) = drill(&["--nemesis", "2", "--seed", "1"]);
    println!("{stdout}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nemesis on dynamodb: 2 of 2 seeds run") && stdout.contains("PASS"),
        "{stdout}"
    );
}

/// `quorate drill --backend dynamodb --cluster FILE`: the scenarios'
/// workloads against a global table named by the service's settings
/// file, while the team's own tool injects the fault. Here the "global
/// table" is DynamoDB Local's three regions joined by the replicator, and
/// the tool is this test pausing replication for the middle of each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_table_of_your_own_is_drilled_while_your_tool_pauses_replication() {
    use quorate_dynamodb::aws_config;
    use quorate_dynamodb::aws_sdk_dynamodb::config::Credentials;
    use quorate_dynamodb::replicator::Replicator;
    use quorate_dynamodb::settings::{DynamoSettings, Loader};
    use quorate_dynamodb::{DynamoBackend, DynamoConfig, Region};
    use std::time::Duration;

    let Some([endpoint]) = quorate::conformance::server_env(
        ["QUORATE_DYNAMODB_ENDPOINT"],
        "DynamoDB Local",
        "scripts/dynamodb",
    ) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("quorate-byoc-dynamodb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table = format!("quorate-byoc-{}", std::process::id());
    let regions = [
        ("eu", "eu-west-1"),
        ("us", "us-east-1"),
        ("ap", "ap-south-1"),
    ];
    let mut text = format!(
        "[dynamodb]\nscope = \"staging\"\ntable = \"{table}\"\nlocal = \"eu\"\nhome = \"eu\"\n"
    );
    for (name, aws) in regions {
        text.push_str(&format!(
            "\n[dynamodb.regions.{name}]\naws_region = \"{aws}\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"local\"\nsecret_access_key = \"s3cr3t-of-the-team\"\n"
        ));
    }
    let file = dir.join("staging.toml");
    std::fs::write(&file, text).unwrap();

    // The team's global table, made once, replicas joined by replication.
    let settings = DynamoSettings::load(&Loader::new().file(&file)).unwrap();
    let backend =
        DynamoBackend::new(DynamoConfig::from_settings(&settings).await.unwrap()).unwrap();
    backend.create_tables().await.unwrap();
    let mut builder = Replicator::builder();
    for (name, aws) in regions {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(aws))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new("local", "local", None, None, "static"))
            .load()
            .await;
        builder = builder.region(Region::new(name).unwrap(), &sdk);
    }
    let replicator = builder
        .tables_of(&backend)
        .lag(Duration::from_millis(100))
        .start()
        .await
        .unwrap();

    // Without the flag: refused, the table named, no secret shown.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "dynamodb", "--cluster"])
        .arg(&file)
        .args(["--scenario", "isolation-latency"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to run against"), "{stderr}");
    assert!(
        stderr.contains(&format!("table {table} in ap-south-1")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "never shows a secret: {stderr}");

    let history = dir.join("h.jsonl");
    let drill = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "dynamodb", "--cluster"])
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
    // The operator's tool: replication stops from the 2nd to the 5th
    // second of each of the two runs.
    let tool = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            replicator.pause();
            tokio::time::sleep(Duration::from_secs(3)).await;
            replicator.resume();
            tokio::time::sleep(Duration::from_secs(2)).await;
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
    let naive = stdout
        .lines()
        .find(|l| l.starts_with("isolation-latency") && l.contains("naive"))
        .expect("a naive row");
    assert!(naive.contains("stale-read="), "{stdout}");
    assert!(stderr.contains("regions eu-west = eu"), "{stderr}");

    // The two runs shared the table, each under a key prefix of its own:
    // the strict run never met the naive run's records or idempotency
    // keys.
    let mut prefixes = Vec::new();
    for config in ["naive", "strict"] {
        let saved = dir.join(format!("h-isolation-latency-{config}.jsonl"));
        let text = std::fs::read_to_string(&saved).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = event["key"].as_str().unwrap();
            let (prefix, _) = key.split_once('/').expect("a prefixed key");
            seen.insert(prefix.to_owned());
            if let Some(idem) = event["idem"].as_str() {
                assert!(idem.starts_with(&format!("{prefix}/")), "{line}");
            }
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        prefixes.extend(seen);
    }
    assert_ne!(prefixes[0], prefixes[1]);
    std::fs::remove_dir_all(dir).unwrap();
}

//! `quorate drill --backend postgres --cluster FILE`: the scenarios'
//! workloads against a cluster named by a settings file, with faults from
//! the team's own tools. Here the cluster is the test servers of
//! `scripts/pg`, and the "tool" is this test pausing both standbys' replay
//! for the middle of each run.

use std::process::Command;
use std::time::Duration;

use quorate_cockroach::tokio_postgres;

fn settings_file(dir: &std::path::Path, primary: &str, s1: &str, s2: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[postgres]\nscope = \"staging\"\nlocal = \"eu\"\n\n[postgres.regions.eu]\nprimary = \"{primary}\"\n\n[postgres.regions.us]\nstandbys = [\"{s1}\"]\n\n[postgres.regions.ap]\nstandbys = [\"{s2}\"]\n"
        ),
    )
    .unwrap();
    path
}

fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("quorate-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_cluster_is_refused_without_the_not_production_flag() {
    let dir = scratch("refused");
    let file = settings_file(
        &dir,
        "host=db-eu.example port=5432 user=app password=hunter2 dbname=orders",
        "host=db-us.example port=5432 user=app dbname=orders",
        "host=db-ap.example port=5432 user=app dbname=orders",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "postgres", "--cluster"])
        .arg(&file)
        .args(["--scenario", "isolation-latency"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to run against"), "{stderr}");
    assert!(
        stderr.contains("db-ap.example"),
        "names the endpoints: {stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "never shows a password: {stderr}"
    );
    assert!(stderr.contains("--not-production"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Pauses (or resumes) replay on both standbys, as an operator's tool
/// would.
async fn replay(standbys: &[String], paused: bool) {
    for s in standbys {
        let (client, conn) = tokio_postgres::connect(s, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let sql = if paused {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = task.await;
    }
}

/// Resumes replay however the test ends.
struct Resume(Vec<String>);

impl Drop for Resume {
    fn drop(&mut self) {
        let standbys = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(replay(&standbys, false))
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_drill_runs_the_workload_while_your_tool_injects_the_fault() {
    let Some([primary, s1, s2]) = quorate::conformance::server_env(
        [
            "QUORATE_PG_PRIMARY",
            "QUORATE_PG_STANDBY1",
            "QUORATE_PG_STANDBY2",
        ],
        "PostgreSQL servers",
        "scripts/pg",
    ) else {
        return;
    };
    let dir = scratch("cluster");
    let file = settings_file(&dir, &primary, &s1, &s2);
    let standbys = vec![s1, s2];
    let _resume = Resume(standbys.clone());
    let drill = tokio::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["drill", "--backend", "postgres", "--cluster"])
        .arg(&file)
        .args([
            "--not-production",
            "--duration",
            "8s",
            "--scenario",
            "isolation-latency",
        ])
        .output();
    // The operator's tool: replay stops on both standbys from the 3rd to
    // the 6th second of each of the two runs.
    let tool = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            replay(&standbys, true).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            replay(&standbys, false).await;
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
    assert!(
        naive.contains("stale-read="),
        "the paused standbys served stale records to the naive client: {stdout}"
    );
    assert!(stderr.contains("regions eu-west = eu"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

//! `quorate drill --backend postgres`, interrupted: the servers are put
//! back all the same.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quorate_cockroach::tokio_postgres;

/// Standby `s`'s `primary_conninfo` and whether its WAL receiver streams;
/// `None` while it does not answer (the drill restarts standbys).
async fn replication_of(standby: &str) -> Option<(String, bool)> {
    let (client, conn) = tokio_postgres::connect(standby, tokio_postgres::NoTls)
        .await
        .ok()?;
    let task = tokio::spawn(conn);
    let conninfo: Option<String> = client
        .query_one("SHOW primary_conninfo", &[])
        .await
        .ok()
        .map(|r| r.get(0));
    let streaming = client
        .query_opt(
            "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await
        .ok()
        .map(|r| r.is_some());
    drop(client);
    let _ = task.await;
    Some((conninfo?, streaming?))
}

/// Stops the drill (SIGTERM, by its PID) however the test ends, so that
/// it puts the servers back.
struct Terminate(u32);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_drill_puts_the_servers_back() {
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
    let port = primary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .to_owned();
    let drill = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "drill",
            "--backend",
            "postgres",
            "--scenario",
            "isolation-latency",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the fault layer has moved a standby's replication onto its
    // proxy: the run is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let _terminate = Terminate(drill.id());
    loop {
        if let Some((conninfo, _)) = replication_of(&s1).await {
            if !conninfo.contains(&format!("port={port}")) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the drill never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SIGTERM, by the child's PID.
    let killed = Command::new("kill")
        .args(["-TERM", &drill.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = drill.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("terminated: putting the servers back"),
        "{stderr}"
    );
    // Off libfaketime again, as before the drill.
    let dir = std::env::var("QUORATE_PG_DIR").unwrap_or_else(|_| "/tmp/quorate-pg".into());
    for n in [0, 1, 2] {
        let clock = std::path::Path::new(&dir).join(format!("clock{n}"));
        assert!(!clock.exists(), "{} is left", clock.display());
    }
    for standby in [&s1, &s2] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = replication_of(standby).await;
            if let Some((conninfo, true)) = &now {
                if conninfo.contains(&format!("port={port}")) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{standby} was not put back: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

//! Faults on real PostgreSQL servers: a standby that applies WAL late, a
//! connection lost after the commit was sent, standbys stopped. These tests
//! change the shared servers, so they run one at a time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use quorate_cockroach::cut_proxy::{Cut, CutProxy};
use quorate_cockroach::{
    Backend, Client, ClientConfig, IdempotencyKey, PgBackend, Precondition, ReadPlan, ReadPolicy,
    Region, ReplicaRole, SessionFloor, Staleness, WriteOptions,
};
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resets the standby's apply delay however the test ends.
struct DelayGuard(String);

impl Drop for DelayGuard {
    fn drop(&mut self) {
        let standby = self.0.clone();
        let reset = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(common::apply_delay(&standby, None));
        })
        .join();
        if reset.is_err() {
            eprintln!(
                "could not reset recovery_min_apply_delay; run scripts/pg stop && scripts/pg start"
            );
        }
    }
}

async fn naive_read(backend: &PgBackend, region: &str, key: &str) -> Option<u64> {
    let region = Region::new(region).unwrap();
    let plan = ReadPlan {
        key,
        region: &region,
        role: ReplicaRole::Follower,
        policy: ReadPolicy::Strong,
        floor: SessionFloor::default(),
        deadline: Instant::now() + Duration::from_secs(5),
    };
    backend.read(&plan).await.unwrap().version().map(|v| v.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_standby_serves_stale_reads_only_to_the_naive() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "us").await;
    let _reset = DelayGuard(s[1].clone());
    common::apply_delay(&s[1], Some("2s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("stale");
    let c1 = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        naive_read(&backend, "us", &key).await,
        Some(c1.version.0),
        "replayed after the delay"
    );
    let c2 = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    // A real stale read: the standby still shows version 1.
    assert_eq!(
        naive_read(&backend, "us", &key).await,
        Some(c1.version.0),
        "the naive read is stale"
    );
    // The writer's session and strong reads never are.
    for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
        let r = client.read(&session, &key, policy).await.unwrap();
        assert_eq!(r.version(), Some(c2.version), "{policy}");
    }
    // Another service continuing the session through its token.
    let other = Client::new(common::backend(&s, "us").await, ClientConfig::default()).unwrap();
    let continued = other
        .resume_session(&client.encode_token(&session))
        .unwrap();
    assert_eq!(
        other
            .read(&continued, &key, ReadPolicy::Session)
            .await
            .unwrap()
            .version(),
        Some(c2.version)
    );
    // Bounded reads never beyond their bound: the standby is ~2 s behind.
    let bound = Staleness::from_millis(1000).unwrap();
    for _ in 0..5 {
        let r = client
            .read(&client.session(), &key, ReadPolicy::BoundedStaleness(bound))
            .await
            .unwrap();
        let f = &r.freshness;
        assert!(
            f.role == ReplicaRole::Leader
                || f.staleness_bound.is_some_and(|b| b <= bound.duration()),
            "{f:?}"
        );
    }
}

fn port_of(connection: &str) -> u16 {
    connection
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("the connection string names a port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_commit_is_resolved_to_exactly_once() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    common::backend(&s, "eu").await;
    let upstream = SocketAddr::from(([127, 0, 0, 1], port_of(&s[0])));
    let proxy = CutProxy::start(upstream).await.unwrap();
    let through_proxy = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        proxy.addr().port()
    );
    let mut config = common::config(&s, "eu");
    config.endpoints = common::endpoints(&through_proxy, &s);
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("ambiguous");
    let c1 = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let idem = IdempotencyKey::new(&format!("transfer-{}", common::key("idem"))).unwrap();
    proxy.arm(idem.as_str().as_bytes(), Cut::Answer);
    let options = WriteOptions {
        idempotency_key: Some(idem),
        ..WriteOptions::default()
    };
    let c2 = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::IfVersion(c1.version),
            &options,
        )
        .await
        .expect("the ambiguous commit is resolved, not reported as a conflict");
    assert_eq!(proxy.fired(), 1, "the answer to the commit was dropped");
    assert_eq!(c2.version, c1.version.next());
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c2.version), "applied exactly once");
    assert_eq!(&r.value.unwrap().value[..], b"2");
}

async fn pg_script(args: &[&str]) {
    let script =
        std::env::var("QUORATE_PG_SCRIPT").expect("scripts/pg start exports QUORATE_PG_SCRIPT");
    let status = tokio::process::Command::new(script)
        .args(args)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "scripts/pg {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_with_standbys_stopped() {
    let Some(s) = common::servers() else { return };
    let _serial = SERIAL.lock().await;
    let backend = common::backend(&s, "eu").await;
    let client = Client::new(
        backend,
        ClientConfig {
            write_deadline: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let session = client.session();
    let key = common::key("quorum");
    pg_script(&["stop-standby", "2"]).await;
    let one_down = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await;
    pg_script(&["stop-standby", "1"]).await;
    let started = Instant::now();
    let none_left = client
        .write(
            &session,
            &key,
            "2".into(),
            Precondition::Any,
            &WriteOptions::default(),
        )
        .await;
    let waited = started.elapsed();
    pg_script(&["start-standby", "1"]).await;
    pg_script(&["start-standby", "2"]).await;
    one_down.expect("one synchronous standby is enough for the quorum");
    let err = none_left.expect_err("no standby: the commit cannot be acknowledged");
    assert!(
        err.is_ambiguous(),
        "its outcome is unknown, not failed: {err}"
    );
    assert!(
        waited < Duration::from_millis(3000),
        "it failed at its deadline instead of hanging: {waited:?}"
    );
}
